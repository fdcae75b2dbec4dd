"""Output folders written all at once.

A command that writes a folder of files (``compile``, ``prune``, ``quantize``) builds them in a
temporary sibling folder (``.NAME.convdsl-XXXX`` next to ``NAME``) and moves it into place only
when every file is written: a failure (a refused program, a full disk, Ctrl-C) leaves no partial
folder and never touches an existing one.

    with staged_folder("out", replaceable=lambda existing: {"model.py", ...}) as tmp:
        (tmp / "model.py").write_text(...)

An existing ``out`` is replaced only when it holds nothing but files this command writes
(``replaceable`` names them, from the folder itself: an artifact's manifest lists its files),
so a user's own folder is never emptied by a typo in ``-o``.  The swap is one atomic
``renameat2(RENAME_EXCHANGE)`` where Linux offers it, two renames elsewhere.
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from convdsl.errors import UsageError

Replaceable = Callable[[Path], "set[str] | None"]  # existing folder -> names it may hold (None: unknown)
REGENERATED = {"__pycache__"}  # folders Python writes beside a generated module: safe to drop


def output_folder(out: str | os.PathLike, replaceable: Replaceable) -> Path:
    """The folder ``out`` names, checked before any work is done: not empty text, not the current
    folder or one above it, and, when it exists, a folder of replaceable files only."""
    text = os.fspath(out)
    if not text.strip():
        raise UsageError("the output folder is empty text", hint="give a folder name, e.g. -o out/")
    path = Path(text)
    if path.is_symlink():
        if not path.is_dir():
            raise UsageError(f"{text} is a symbolic link to no folder", hint="give a folder name, e.g. -o out/")
        path = Path(os.path.realpath(path))  # the link stays; its target is replaced
    path = Path(os.path.abspath(path))
    here = Path(os.getcwd())
    if path == here or path in here.parents:
        raise UsageError(f"{text} is the current folder or one above it; convdsl replaces its output folder "
                         "as a whole", hint="write to a new folder, e.g. -o out/")
    if path.exists() or path.is_symlink():
        _check_replaceable(path, text, replaceable)
        return path
    above = path.parent
    while not (above.exists() or above.is_symlink()):
        above = above.parent
    if not above.is_dir():
        raise UsageError(f"cannot write {text}: {above} is not a folder", hint="choose another output folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {text}: {above} is not writable", hint="choose another output folder")
    return path


def _check_replaceable(path: Path, shown: str, replaceable: Replaceable) -> None:
    if not path.is_dir():
        raise UsageError(f"{shown} exists and is not a folder", hint="choose another output folder")
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as e:
        raise UsageError(f"cannot read {shown}: {e.strerror}") from None
    if not entries:
        return
    names = replaceable(path)
    if names is None:
        raise UsageError(f"{shown} exists and is not a folder this command wrote; convdsl will not replace it",
                         notes=[f"it holds {', '.join(e.name for e in entries[:5])}{', ...' if len(entries) > 5 else ''}"],
                         hint="choose a new output folder, or remove that one first")
    foreign = [e.name + ("/" if e.is_dir(follow_symlinks=False) else "") for e in entries
               if not (e.is_file(follow_symlinks=False) and e.name in names)
               and not (e.name in REGENERATED and e.is_dir(follow_symlinks=False))]
    if foreign:
        raise UsageError(f"{shown} holds {', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}, which this "
                         "command did not write; convdsl replaces its output folder as a whole and will not delete it",
                         hint="move those files out, or choose another output folder")


@contextmanager
def staged_folder(out: str | os.PathLike, replaceable: Replaceable) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; when the block ends without an error, it
    becomes ``out`` (replacing the old one); on any error it is removed and ``out`` is untouched.
    OSErrors (a full disk, no permission) become ``UsageError`` naming ``out``."""
    target = output_folder(out, replaceable)
    made: list[Path] = []
    tmp: Path | None = None
    try:
        made = _make_parents(target.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.convdsl-", dir=target.parent))
        yield tmp
        _finish(tmp)
        if target.exists() or target.is_symlink():
            _check_replaceable(target, os.fspath(out), replaceable)  # again: it may have changed meanwhile
        _swap(tmp, target)
        tmp = None
    except OSError as e:
        raise UsageError(f"cannot write {os.fspath(out)}: {e.strerror or e}",
                         notes=[f"at {e.filename}"] if e.filename else None) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            for p in reversed(made):
                try:
                    p.rmdir()
                except OSError:
                    break


def _make_parents(parent: Path) -> list[Path]:
    """Create ``parent`` and the folders above it that are missing; the ones made, outermost first
    (none left behind when one cannot be made)."""
    missing = []
    p = parent
    while not (p.exists() or p.is_symlink()):
        missing.append(p)
        p = p.parent
    made: list[Path] = []
    try:
        for m in reversed(missing):
            m.mkdir()
            made.append(m)
    except OSError:
        for m in reversed(made):
            m.rmdir()
        raise
    return made


def current_umask() -> int:
    """The process umask, read without changing it (os.umask sets it to read it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _finish(tmp: Path) -> None:
    """Permissions as a plain ``mkdir``/``open`` would give (mkdtemp makes 0700, some writers 0600),
    and every file on disk before the folder is renamed into place."""
    mask = current_umask()
    for dirpath, dirnames, filenames in os.walk(tmp):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                os.chmod(p, (0o777 if st.st_mode & 0o111 else 0o666) & ~mask)
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)


_AT_FDCWD, _RENAME_NOREPLACE, _RENAME_EXCHANGE = -100, 1, 2


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2; False where the C library or the file system does not offer it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(dst))


def _swap(tmp: Path, target: Path) -> None:
    """``tmp`` becomes ``target``; the old ``target`` (if any) is removed afterwards."""
    if not (target.exists() or target.is_symlink()):
        if not _renameat2(tmp, target, _RENAME_NOREPLACE):
            os.rename(tmp, target)
        _fsync_dir(target.parent)
        return
    if _renameat2(tmp, target, _RENAME_EXCHANGE):  # tmp now holds the old folder
        old = tmp
    else:
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.convdsl-old-", dir=target.parent))
        os.rename(target, old / "d")
        try:
            os.rename(tmp, target)
        except OSError:
            os.rename(old / "d", target)
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
