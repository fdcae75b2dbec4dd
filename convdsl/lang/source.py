"""Reading .cdl sources from disk."""
from __future__ import annotations

from pathlib import Path

from convdsl.lang.limits import MAX_SOURCE


def read_source(path: str) -> str:
    """The default import loader: a regular UTF-8 file of bounded size (never a device or a pipe)."""
    p = Path(path)
    if not p.is_file():
        raise OSError(f"{'a directory' if p.is_dir() else 'no such file' if not p.exists() else 'not a regular file'}")
    if p.stat().st_size > MAX_SOURCE:
        raise OSError(f"larger than {MAX_SOURCE // 1024 // 1024} MiB")
    return p.read_text(encoding="utf-8")
