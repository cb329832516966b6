"""Writing files safely: output paths checked before the work, and writes that never destroy a good file.

`check_output_path` / `check_output_dir` fail early, with one line naming the path, when a file
cannot be written there (the path is a folder or inside a file, the folder is read-only).
`atomic_write` streams into a temporary file beside the target, fsyncs it and renames it over the
target, so a failed, interrupted or killed write leaves the previous file byte for byte as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


class OutputPathError(ValueError):
    """An output path that cannot be written."""


def _existing_ancestor(path: Path) -> Path:
    """The nearest folder (or file) above path that exists."""
    return next(p for p in path.absolute().parents if p.exists())


def _check_writable_folder(path: Path, folder: Path) -> None:
    """folder must be a folder in which a file can be created (probed, not guessed from permissions)."""
    if not folder.is_dir():
        raise OutputPathError(f"cannot write {path}: {folder} is a file, not a folder; choose another path")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputPathError(
            f"cannot write {path}: {folder} is not writable ({exc.strerror}); choose another path"
        ) from None


def check_output_path(path: str | Path, suffix: str | None = None) -> Path:
    """path as a Path if a file can be written there (its folders are created later), else OutputPathError."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(
            f"{path} is a folder; give a file path such as {path / ('out' + (suffix or ''))}"
        )
    if suffix is not None and path.suffix != suffix:
        raise OutputPathError(f"{path} should end in {suffix}; choose a path such as {path.stem}{suffix}")
    folder = path.parent if path.parent.exists() else _existing_ancestor(path)
    _check_writable_folder(path, folder)
    return path


def check_output_dir(path: str | Path) -> Path:
    """path as a Path if it is (or can be created as) a writable folder, else OutputPathError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{path} is a file, not a folder; choose another output folder")
    _check_writable_folder(path, path if path.exists() else _existing_ancestor(path))
    return path


def _new_file_mode(path: Path) -> int:
    """The permission bits the written file gets: the old file's, else the usual 0o666 minus umask."""
    if path.exists():
        return path.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file object whose content replaces path only when the block ends without an exception.

    The data goes to a hidden temporary file in path's folder (created if needed), is fsynced, then
    renamed over path (atomic on POSIX). On any error the temporary file is removed and the error propagates; a
    killed process leaves at most a stale `.<name>.*.tmp` beside an intact path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    folder = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace path's content with data atomically (see `atomic_write`)."""
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Replace path's content with UTF-8 text atomically (see `atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))
