"""A content hash sealed into a .pte, so that a runtime can tell a damaged file before running it.

ExecuTorch checks a program's structure when it loads it (flatbuffer offsets and sizes), not its
content: a flipped byte in an operator index can load and then crash, and a flipped weight byte
runs and prints garbage. `seal` appends a trailer after the program bytes, MAGIC followed by the
sha256 of every byte before the trailer. ExecuTorch reads a program from the offsets in its header
and ignores bytes after it, so a sealed file still loads unchanged in the Python runtime, the C++
Module and ExecuTorch's TextLLMRunner. `verify` (and the C++ runner, cpp/integrity.h) recompute the
hash before loading.

A file without a trailer passes `verify` unchecked (it returns False): ExecuTorch's own
`export_llm` writes none, and such files must keep running in our runtimes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .files import atomic_write

MAGIC = b"llama2_et:sha256"
SEAL_SIZE = len(MAGIC) + hashlib.sha256().digest_size  # 48 bytes
_CHUNK = 1 << 20


def _sealed_digest(path: Path) -> bytes | None:
    """The sha256 in the file's trailer, or None if it has no trailer."""
    size = path.stat().st_size
    if size < SEAL_SIZE:
        return None
    with open(path, "rb") as f:
        f.seek(size - SEAL_SIZE)
        trailer = f.read(SEAL_SIZE)
    return trailer[len(MAGIC) :] if trailer.startswith(MAGIC) else None


def _program_digest(path: Path, program_size: int) -> bytes:
    """sha256 of the file's first program_size bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while program_size > 0:
            chunk = f.read(min(_CHUNK, program_size))
            if not chunk:
                raise ValueError(f"{path} shrank while it was read; read it again when nothing writes it")
            digest.update(chunk)
            program_size -= len(chunk)
    return digest.digest()


def is_sealed(path: str | Path) -> bool:
    """Whether the file carries a content-hash trailer (matching or not)."""
    return _sealed_digest(Path(path)) is not None


def sealed(program: bytes) -> bytes:
    """program followed by its trailer: what export writes."""
    return program + MAGIC + hashlib.sha256(program).digest()


def seal(path: str | Path) -> Path:
    """Append the content hash to a written .pte (replacing an earlier one); the file is swapped atomically."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"program not found: {path}")
    left = path.stat().st_size - (SEAL_SIZE if is_sealed(path) else 0)
    digest = hashlib.sha256()
    with open(path, "rb") as source, atomic_write(path) as out:
        while left > 0:
            chunk = source.read(min(_CHUNK, left))
            if not chunk:
                raise ValueError(f"{path} shrank while it was sealed; seal it when nothing writes it")
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
        out.write(MAGIC + digest.digest())
    return path


def verify(path: str | Path) -> bool:
    """True if the file's sealed hash matches its bytes, False if it has none; a ValueError if damaged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"program not found: {path}")
    sealed = _sealed_digest(path)
    if sealed is None:
        return False
    if _program_digest(path, path.stat().st_size - SEAL_SIZE) != sealed:
        raise ValueError(
            f"{path} is damaged: content hash mismatch (its bytes changed since export); "
            "re-export it with `python -m llama2_et export`"
        )
    return True
