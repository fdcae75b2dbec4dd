"""Torch lowerings of the misc ops (see lowering.py for the entry format)."""
from __future__ import annotations

LOWERINGS: dict = {}
