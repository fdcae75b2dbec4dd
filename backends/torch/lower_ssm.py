"""Torch lowerings of the ssm ops (see lowering.py for the entry format)."""
from __future__ import annotations

LOWERINGS: dict = {}
