"""Replacing a file whole: a reader, or a restart after a crash, finds the old content or the
new, never half of either.

The new content goes to a temporary file in the same directory (a rename is atomic only within
one file system), is fsynced, renamed over the target, and the directory is fsynced so the
rename itself survives a power cut. On any error the temporary file is removed and the target
is left as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(path: Path | str, *, mode: int = 0o600, suffix: str = ".tmp") -> Iterator[Path]:
    """A fresh, empty temporary file next to ``path`` for the caller to fill by name (a writer
    that wants a path: Keras, SQLite, a streamed write) and close; on a clean exit it replaces
    ``path``.

    ``mode`` is set exactly (whatever the umask): the files written this way hold models,
    alerts and state, so they default to owner-only. ``suffix`` ends the temporary name, for
    writers that judge a file by it (Keras wants ``.keras``).
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    tmp = Path(name)
    try:
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        yield tmp
        with open(tmp, "rb") as f:  # fsync flushes the file's pages whichever descriptor wrote
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: Path | str, data: bytes | str, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` (a string is written as UTF-8) whole; see `replacing`."""
    if isinstance(data, str):
        data = data.encode()
    with replacing(path, mode=mode) as tmp, open(tmp, "wb") as f:
        f.write(data)


def fsync_dir(path: Path | str) -> None:
    """Make a rename or a new entry in ``path`` durable; best effort (some file systems refuse
    a directory's fsync, and the data itself is already on disk)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: Path | str) -> str:
    """The SHA-256 of a file's bytes, read in blocks (bundles and registries check files by it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def user_state_dir() -> Path:
    """vaeguard's per-user state folder (XDG): ``$XDG_STATE_HOME/vaeguard``, else
    ``~/.local/state/vaeguard``; absolute, so it does not move with the working directory a
    process starts in. RuntimeError where there is no home folder to resolve."""
    return _xdg("XDG_STATE_HOME", (".local", "state"))


def user_cache_dir() -> Path:
    """vaeguard's per-user cache folder (XDG): ``$XDG_CACHE_HOME/vaeguard``, else
    ``~/.cache/vaeguard``, by the same rule as `user_state_dir`."""
    return _xdg("XDG_CACHE_HOME", (".cache",))


def _xdg(variable: str, default: tuple[str, ...]) -> Path:
    """``$variable/vaeguard`` when the variable holds an absolute path (the XDG rule: a relative
    one is ignored), else ``~/<default>/vaeguard``."""
    base = os.environ.get(variable, "")
    if base and Path(base).is_absolute():
        return Path(base) / "vaeguard"
    return Path.home().joinpath(*default) / "vaeguard"
