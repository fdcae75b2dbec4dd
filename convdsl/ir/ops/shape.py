"""Shape ops (the ops helper extends this file)."""
from __future__ import annotations

OPS: list = []
