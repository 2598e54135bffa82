"""File primitives the converter and the mirror client share: atomic writes, an advisory lock, sha256, confinement.

Nothing half-written ever carries a final name: data goes to `<name>.incomplete`, is fsynced, then renamed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

INCOMPLETE = ".incomplete"
_CHUNK = 1 << 22  # bytes hashed or copied at a time


def update_hash(hasher: Any, path: os.PathLike | str, limit: int | None = None) -> Any:
    """Feed the first `limit` bytes of `path` (all of them when None) into `hasher`; returns it."""
    remaining = limit
    with open(path, "rb") as f:
        while remaining is None or remaining > 0:
            block = f.read(_CHUNK if remaining is None else min(_CHUNK, remaining))
            if not block:
                break
            hasher.update(block)
            if remaining is not None:
                remaining -= len(block)
    return hasher


def sha256_file(path: os.PathLike | str) -> str:
    """Hex sha256 of a file, read in chunks."""
    return update_hash(hashlib.sha256(), path).hexdigest()


def file_matches(path: Path, size: int, sha256: str | None) -> bool:
    """True when `path` is a file of `size` bytes whose sha256 is `sha256` (not hashed when None)."""
    try:
        if not path.is_file() or path.stat().st_size != size:
            return False
        return sha256 is None or sha256_file(path) == sha256
    except OSError:
        return False


def fsync_dir(path: os.PathLike | str) -> None:
    """Make a rename inside `path` durable (best effort: some filesystems cannot fsync a directory)."""
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


def atomic_write_bytes(path: os.PathLike | str, data: bytes) -> None:
    """Write `data` to `path` through `<path>.incomplete`, fsynced, then renamed over `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + INCOMPLETE)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: os.PathLike | str, data: Any) -> None:
    """Write `data` as indented UTF-8 JSON, atomically (see `atomic_write_bytes`)."""
    atomic_write_bytes(path, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def atomic_copy(src: os.PathLike | str, dest: os.PathLike | str) -> None:
    """Copy the bytes of `src` to `dest` through `<dest>.incomplete`, fsynced, then renamed."""
    dest = Path(dest)
    tmp = dest.with_name(dest.name + INCOMPLETE)
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)
        fout.flush()
        os.fsync(fout.fileno())
    os.replace(tmp, dest)


def within(root: os.PathLike | str, path: os.PathLike | str) -> bool:
    """True when `path`, every symlink resolved, lies strictly inside `root` (also resolved)."""
    real_root = Path(root).resolve()
    return real_root in Path(path).resolve().parents


def same_file(a: os.PathLike | str, b: os.PathLike | str) -> bool:
    """True when both paths exist and are one file or folder (same device and inode), however spelled."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


@contextlib.contextmanager
def file_lock(path: os.PathLike | str) -> Iterator[None]:
    """Hold an exclusive POSIX advisory lock on `path` (created if needed); a no-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
