"""Output files: one atomic writer, one folder check and one markdown-table renderer.

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
