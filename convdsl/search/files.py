"""Files a search writes into its folder: whole or not at all, and never through a link.

A search folder may be shared, synced or prepared by someone else, so a name in it that is a
symbolic link is never followed for writing (a planted ``summary.md -> ~/.bashrc`` would
otherwise be overwritten): a file is written under a fresh temporary name (``O_EXCL``, never a
link) and renamed over the target, which replaces a link rather than writing through it; a
folder that is a link is refused.  A kill at any instant leaves the old file or the new one.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from convdsl.search.history import HistoryError


def cannot_write(path: Path, e: OSError) -> HistoryError:
    folder = path.parent if path.parent.name not in ("weights", "pareto") else path.parent.parent
    return HistoryError(f"cannot write {path}: {e.strerror or e}",
                        hint=f"free disk space or fix the permissions, then continue with: convdsl search --resume "
                             f"{folder} (every stored result is kept)")


def own_dir(path: Path) -> Path:
    """``path`` as a real folder of the search (created if missing); a link is refused."""
    if path.is_symlink():
        raise HistoryError(f"{path} is a symbolic link; a search writes only into its own folder",
                           hint="remove the link (the search recreates the folder)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cannot_write(path, e) from None
    if not path.is_dir():
        raise HistoryError(f"{path} exists and is not a folder")
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise cannot_write(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # as open() would have created it
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise cannot_write(path, e) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files of writes a kill interrupted (only ours: ``.NAME.XXXX.tmp``)."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for p in folder.glob(".*.tmp"):
        if p.is_file() and not p.is_symlink():
            with contextlib.suppress(OSError):
                p.unlink()
