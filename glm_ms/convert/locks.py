"""An advisory file lock shared by the downloader and the converter."""
import contextlib
from pathlib import Path


@contextlib.contextmanager
def file_lock(path):
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
