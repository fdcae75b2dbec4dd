"""Reading .cdl sources from disk.

Every source convdsl reads -- the main file of check/compile/stats/fmt/search and every
``import`` -- goes through ``read_bytes``: a regular file (never a directory, a device or a
pipe, which could block forever or never end) of at most ``MAX_SOURCE`` bytes, checked from
``fstat`` and again while reading (a file may grow, and /proc files report size 0).
"""
from __future__ import annotations

import errno
import os
import stat

from convdsl.errors import CDLSyntaxError, Span, UsageError, remember_source
from convdsl.lang.limits import MAX_SOURCE

_BOM = b"\xef\xbb\xbf"
_MIB = MAX_SOURCE // 1024 // 1024


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file of at most ``MAX_SOURCE`` bytes; ``OSError`` (with a short
    ``strerror``) for anything else."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except ValueError:  # a NUL byte in the path
        raise OSError(errno.EINVAL, "the path contains a NUL byte") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise OSError(errno.EISDIR, "a directory")
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a device, pipe or socket)")
        if st.st_size > MAX_SOURCE:
            raise OSError(errno.EFBIG, f"larger than {_MIB} MiB")
        chunks, size = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, MAX_SOURCE + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_SOURCE:
                raise OSError(errno.EFBIG, f"larger than {_MIB} MiB")
        return b"".join(chunks)
    finally:
        os.close(fd)


def decode(data: bytes) -> str:
    """UTF-8 text, without a leading byte-order mark; ``UnicodeDecodeError`` otherwise (see
    ``bad_byte``)."""
    return data[len(_BOM):].decode("utf-8") if data.startswith(_BOM) else data.decode("utf-8")


def bad_byte(err: UnicodeDecodeError) -> tuple[int, int, str]:
    """Line, column (in characters, 1-based) and a description of the first byte that is not
    UTF-8, from the error ``decode`` raised."""
    data, start = bytes(err.object), err.start
    line = data.count(b"\n", 0, start) + 1
    line_start = data.rfind(b"\n", 0, start) + 1
    column = len(data[line_start:start].decode("utf-8")) + 1  # everything before `start` decoded
    return line, column, f"byte 0x{data[start]:02X} ({err.reason})"


def read_source(path: str) -> str:
    """The default import loader: the text of a .cdl file (``OSError`` if it cannot be read,
    ``UnicodeDecodeError`` if it is not UTF-8)."""
    return decode(read_bytes(path))


def read_program(path: str | os.PathLike) -> str:
    """The text of a main .cdl file given on the command line or to the API: ``UsageError`` if
    it cannot be read, a located ``CDLSyntaxError`` at the first byte that is not UTF-8."""
    try:
        data = read_bytes(path)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}", expected="a .cdl text file") from None
    try:
        return decode(data)
    except UnicodeDecodeError as e:
        line, column, what = bad_byte(e)
        # the user's own file: its line is shown, the bad byte as U+FFFD under the caret
        remember_source(str(path), bytes(e.object).decode("utf-8", "replace"))
        raise CDLSyntaxError(f"not UTF-8 text: {what}", Span(str(path), line, column),
                             expected="a .cdl file in UTF-8",
                             hint="save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
