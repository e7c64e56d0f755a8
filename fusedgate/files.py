"""Files: one reader of a user's input file, one atomic writer, one folder check and one markdown-table renderer.

``read_bytes(path, what, max_bytes)`` and ``read_text(...)`` read a file the user named (a spec, an
``--init`` file, a results JSON, a text corpus): ``check_regular_file`` ``os.stat``-s it first and refuses
a folder, a FIFO, a device or a socket before anything opens it (opening a FIFO blocks until a writer
comes; ``/dev/zero`` never ends), and a file over ``max_bytes`` (the limit is in the message). The file is
then opened non-blocking and ``fstat``-ed again, so one swapped for a FIFO after the check cannot block
either, and at most ``max_bytes`` are read. ``read_text`` decodes strict UTF-8. Every failure is a
:class:`ReadError`: one line, ``cannot read <what> <path>: <reason>``. ``check_regular_file`` alone is
the check before a reader that opens the file itself (``torch.load``, SQLite).

``write_atomic(path, content)`` writes ``content`` (text, bytes, or a function that writes into a binary
file object, for objects too big to render twice in memory such as checkpoints) to a temporary file in
``path``'s own folder, flushes and fsyncs it, then ``os.replace``\\ s it over ``path``. The temporary file
is on the same file system, so the rename is atomic: a reader (or a crash) sees the old file or the new
one, never a half-written one. On any failure the temporary file is removed and a :class:`WriteError`
names the path and the reason in one line (a killed process can leave a hidden ``.<name>.*.tmp`` behind;
it never replaces anything).

``check_writable_folder(folder)`` answers "could a run write here?" before the run spends any time: it
creates nothing, and probes the folder (or, when it does not exist yet, its nearest existing parent)
by creating and removing a temporary file, so it also refuses read-only file systems and folders that
root may not write (where ``os.access`` would say yes).

``markdown_table(headers, rows)`` renders a GitHub-flavoured markdown table with ``tabulate``; cells are
taken as given (``str`` of each value, no number reformatting) and a ``|`` inside a cell is escaped.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from tabulate import tabulate

_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
_UMASK = os.umask(0o022)  # read the process umask once (os.umask can only read it by setting it) ...
os.umask(_UMASK)  # ... and put it back


class WriteError(OSError):
    """An output file or folder could not be written; the message is one line naming it and why."""

    def __init__(self, code: int | None, message: str):
        super().__init__(message)  # one argument: str(self) is the message, without "[Errno N]"
        self.errno = code


class ReadError(OSError):
    """An input file could not be read; ``str(self)`` is one line naming it and why, ``reason`` the why alone."""

    def __init__(self, code: int | None, what: str, path: str | os.PathLike, reason: str):
        super().__init__(f"cannot read {what} {os.fspath(path)}: {reason}")
        self.errno = code
        self.path = os.fspath(path)
        self.reason = reason


_KINDS = ((stat.S_ISDIR, errno.EISDIR, "a folder"), (stat.S_ISFIFO, errno.EINVAL, "a FIFO (named pipe)"),
          (stat.S_ISCHR, errno.EINVAL, "a character device"), (stat.S_ISBLK, errno.EINVAL, "a block device"),
          (stat.S_ISSOCK, errno.EINVAL, "a socket"))


def size_text(n: int) -> str:
    """``n`` bytes for a message: ``1 MiB``, ``64 GiB``, ``1,000 bytes``."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n:,} bytes"


def _not_regular(mode: int) -> tuple[int, str] | None:
    if stat.S_ISREG(mode):
        return None
    for test, code, kind in _KINDS:
        if test(mode):
            return code, f"it is {kind}, not a regular file"
    return errno.EINVAL, "it is not a regular file"


def check_regular_file(path: str | os.PathLike, what: str = "file", max_bytes: int | None = None) -> os.stat_result:
    """``os.stat`` ``path`` (following links) and raise :class:`ReadError` unless it is a regular file of at most
    ``max_bytes`` bytes. Opens nothing, so a FIFO or a device is refused without blocking."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ReadError(errno.ENOENT, what, path, "it does not exist") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise ReadError(getattr(exc, "errno", None), what, path, getattr(exc, "strerror", None) or str(exc)) from None
    bad = _not_regular(st.st_mode)
    if bad:
        raise ReadError(bad[0], what, path, bad[1])
    if max_bytes is not None and st.st_size > max_bytes:
        raise ReadError(errno.EFBIG, what, path, f"it is {size_text(st.st_size)}, over the {size_text(max_bytes)} "
                                                 f"limit for a {what}")
    return st


def read_bytes(path: str | os.PathLike, what: str, max_bytes: int, truncate: bool = False) -> bytes:
    """The content of the regular file ``path`` (see the module docstring); a file over ``max_bytes`` is a
    :class:`ReadError`, or, with ``truncate``, its first ``max_bytes`` bytes."""
    check_regular_file(path, what, None if truncate else max_bytes)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ReadError(exc.errno, what, path, exc.strerror or type(exc).__name__) from None
    with os.fdopen(fd, "rb") as fh:
        bad = _not_regular(os.fstat(fd).st_mode)  # replaced by a FIFO or a device since the stat
        if bad:
            raise ReadError(bad[0], what, path, bad[1])
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise ReadError(exc.errno, what, path, exc.strerror or type(exc).__name__) from None
    if len(data) > max_bytes:
        if not truncate:  # it grew since the stat
            raise ReadError(errno.EFBIG, what, path, f"it is over the {size_text(max_bytes)} limit for a {what}")
        data = data[:max_bytes]
    return data


def read_text(path: str | os.PathLike, what: str, max_bytes: int) -> str:
    """``read_bytes`` decoded as strict UTF-8; a file that is not UTF-8 is a :class:`ReadError` naming the
    first bad byte."""
    data = read_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReadError(errno.EILSEQ, what, path, f"it is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                                                  f"{exc.start})") from None


def _reason(exc: OSError, folder: Path) -> str:
    if exc.errno in _NOT_WRITABLE:
        return f"the folder {folder} is not writable ({exc.strerror})"
    return exc.strerror or type(exc).__name__


def write_atomic(path: str | os.PathLike, content: str | bytes | Callable[[IO[bytes]], Any]) -> Path:
    """Replace ``path`` with ``content`` atomically (see the module docstring); returns ``path``.
    ``str`` is written as UTF-8. Raises :class:`WriteError`."""
    path = Path(path)
    folder = path.parent
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise WriteError(exc.errno, f"cannot write {path}: {_reason(exc, folder)}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(content):
                content(fh)
            else:
                fh.write(content.encode("utf-8") if isinstance(content, str) else content)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise WriteError(exc.errno, f"cannot write {path}: {_reason(exc, folder)}") from None
    except BaseException:
        _remove(tmp)
        raise
    return path


def check_writable_folder(folder: str | os.PathLike) -> Path:
    """Raise :class:`WriteError` unless files can be created in ``folder`` (or, if it does not exist, in its
    nearest existing parent, where it would be created). Creates nothing; returns ``folder``."""
    folder = Path(folder).expanduser()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = folder if existing == folder else f"{folder} (its parent {existing} is a file)"
        raise WriteError(errno.ENOTDIR, f"cannot write into {what}: not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise WriteError(exc.errno, f"cannot write into {folder}: {_reason(exc, existing)}") from None
    return folder


def markdown_table(headers: Sequence[Any], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table of ``str(cell)`` values, ``|`` escaped, no trailing newline."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    return tabulate([[cell(v) for v in row] for row in rows], headers=[cell(h) for h in headers],
                    tablefmt="github", disable_numparse=True)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
