"""Writing files atomically: a temporary file in the target's folder, then a rename (cli.md).

A failure, Ctrl-C or SIGTERM at any point leaves either the old file or the new one, never half of
one, and no temporary file behind. What the target is decides how it is written:
- a regular file, or a name that does not exist yet: temporary file next to it, then `os.replace`;
- a symlink to a regular file: written through, the link stays (the file it points to is replaced);
- a character device or a pipe (`/dev/null`, `/dev/stdout`, a FIFO): written directly, once the
  content is complete; nothing is ever renamed over a special file;
- a directory or anything else: refused (`OutputError`, exit 3).

`check_writable()` lets a command refuse a bad output target before it starts its work.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from .errors import OutputError

# Temporary files not yet renamed into place. The CLI's top-level handler removes what is left
# when a signal ends the process in the middle of a write.
_PENDING: set[str] = set()


def remove_pending() -> None:
    for tmp in list(_PENDING):
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _PENDING.discard(tmp)


def _describe(error: OSError) -> str:
    return error.strerror or str(error)


def resolve_target(path: str | Path) -> tuple[Path, str]:
    """(where to write, how): "replace" a regular (or new) file, or write "direct"ly to a device or
    pipe. Raises OutputError for directories and other kinds of file."""
    if str(path) == "":
        raise OutputError("the output path is empty")
    path = Path(path).expanduser()
    real = Path(os.path.realpath(path))
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        ancestor = _existing_ancestor(real)
        if not ancestor.is_dir():
            raise OutputError(f"{path}: {ancestor} is not a folder") from None
        return real, "replace"  # missing folders are created when the file is written
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({_describe(e)})") from None
    if stat.S_ISREG(mode):
        return real, "replace"
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return real, "direct"
    if stat.S_ISDIR(mode):
        raise OutputError(f"{path}: is a directory")
    raise OutputError(f"{path}: not a regular file, a character device or a pipe")


def _existing_ancestor(path: Path) -> Path:
    for candidate in path.parents:
        if candidate.exists():
            return candidate
    return Path("/")


def check_writable(path: str | Path) -> None:
    """Refuse an output target that cannot be written, before any work is done."""
    real, how = resolve_target(path)
    folder = _existing_ancestor(real)
    if how == "replace" and not os.access(folder, os.W_OK):
        raise OutputError(f"{path}: cannot write into {folder} (permission denied or read-only)")
    if how == "direct" and not os.access(real, os.W_OK):
        raise OutputError(f"{path}: permission denied")


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path to write the whole content to; on success it becomes `path`."""
    real, how = resolve_target(path)
    folder = real.parent if how == "replace" else None  # a device's folder (/dev) is no place for it
    suffix = real.suffix if how == "replace" else Path(path).suffix
    tmp = None
    try:
        try:
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{real.name}.", suffix=suffix or ".tmp")
        except OSError as e:
            raise OutputError(f"{path}: cannot write ({_describe(e)})") from None
        _PENDING.add(tmp)
        os.close(handle)
        yield tmp
        try:
            if how == "direct":
                with open(tmp, "rb") as source, open(real, "wb") as target:
                    shutil.copyfileobj(source, target)
            else:
                # mkstemp makes the file private (0600); a profile or a plot gets the usual mode.
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)
                os.replace(tmp, real)
        except OSError as e:
            raise OutputError(f"{path}: cannot write ({_describe(e)})") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            _PENDING.discard(tmp)


@contextlib.contextmanager
def staged_outputs(targets: list[str | Path]):
    """Write several outputs together: yields one temporary path per target (in order); only when
    the block succeeds are they all put in place, so a failing plot never leaves a profile behind
    while the command reports failure (or the other way round)."""
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(target)) for target in targets]
        yield tmps
        # ExitStack closes in reverse order: every temporary is renamed into place on the way out.


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text to a (temporary) path; a full disk or a file size limit is an OutputError."""
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({_describe(e)})") from None


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        write_text(tmp, text)
    return Path(path)
