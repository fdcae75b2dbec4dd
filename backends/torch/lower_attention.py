"""Torch lowerings of the attention ops (see lowering.py for the entry format)."""
from __future__ import annotations

LOWERINGS: dict = {}
