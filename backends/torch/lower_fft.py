"""Torch lowerings of the fft ops (see lowering.py for the entry format)."""
from __future__ import annotations

LOWERINGS: dict = {}
