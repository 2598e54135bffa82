"""ModelScope client: list a model repository and download a verified snapshot of it.

Speaks the protocol in DESIGN.md ("ModelScope mirror protocol") with plain ``requests``:

* list   ``GET {base}/api/v1/models/{owner}/{name}/repo/files?Revision={rev}&Recursive=True``
* fetch  ``GET {base}/api/v1/models/{owner}/{name}/repo?Revision={rev}&FilePath={path}``
  (redirects followed; the target may honour ``Range``).

Guarantees, whatever the mirror answers:

* nothing is written outside ``<cache>/modelscope/<owner>/<name>/<revision>/``: listing paths that
  are absolute, hold ``..``/``.``/empty components, backslashes or NUL are refused before any
  download starts (the official client writes ``../x`` outside its folder; we do not);
* a file appears under its final name only after its Size and Sha256 matched the listing
  (``os.replace`` from ``<name>.incomplete``). An interrupted download leaves only the
  ``.incomplete`` file, which the next call resumes with ``Range`` -- accepted only when the
  answer is ``206`` whose ``Content-Range`` starts exactly where the partial file ends;
* after a complete, verified snapshot a ``.glm_ms_snapshot.json`` is written, and later calls for
  the same model id and revision make no HTTP request at all (``force=True`` re-lists and
  re-hashes). Files touched since are re-hashed offline before being trusted again.

The mirror's branch (``master``) can move; a cached snapshot is only refreshed with ``force=True``.
"""
from __future__ import annotations

import contextlib
import email.utils
import fnmatch
import hashlib
import json
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union
from urllib.parse import quote, quote_plus

import requests
from tqdm.auto import tqdm

from .locks import file_lock

__all__ = [
    "DEFAULT_ENDPOINT",
    "SNAPSHOT_MANIFEST",
    "INCOMPLETE_SUFFIX",
    "ModelScopeError",
    "InvalidModelIdError",
    "ModelNotFoundError",
    "RevisionNotFoundError",
    "EntryNotFoundError",
    "UnsafePathError",
    "IntegrityError",
    "RepoFile",
    "resolve_endpoint",
    "resolve_cache_dir",
    "snapshot_path",
    "list_repo_files",
    "snapshot_download",
]

DEFAULT_ENDPOINT = "https://modelscope.cn"
ENDPOINT_ENV = "MODELSCOPE_ENDPOINT"
CACHE_ENV = "GLM_MS_CACHE"
SNAPSHOT_MANIFEST = ".glm_ms_snapshot.json"
INCOMPLETE_SUFFIX = ".incomplete"
_MANIFEST_VERSION = 1
# Bytes per read. A read cut short by a dropped connection or a stall loses what it had buffered,
# so this is also the most a resume re-fetches; 64 KiB keeps that small at negligible loop cost.
_CHUNK = 1 << 16
_USER_AGENT = "glm_ms/0.1 (+requests)"

Timeout = Union[float, Tuple[float, float]]

# Indirection so tests can record the back-off delays instead of sleeping.
_sleep: Callable[[float], None] = time.sleep


# ----------------------------------------------------------------------------------------------
# Errors


class ModelScopeError(RuntimeError):
    """Base class of every error raised by the ModelScope client."""


class InvalidModelIdError(ModelScopeError, ValueError):
    """The model id is not of the form ``owner/name``."""


class ModelNotFoundError(ModelScopeError):
    """The mirror does not know the model (HTTP 404 on the listing)."""


class RevisionNotFoundError(ModelScopeError):
    """The model exists but the revision does not (listing answered ``"Files": null``)."""


class EntryNotFoundError(ModelScopeError):
    """A file present in the listing could not be fetched (HTTP 404 on download)."""


class UnsafePathError(ModelScopeError):
    """The listing holds a path that would escape the snapshot folder (or is otherwise unsafe)."""


class IntegrityError(ModelScopeError):
    """A downloaded file kept disagreeing with the listing's Size or Sha256."""


class _Transient(Exception):
    """One failed attempt worth retrying; ``final`` is raised instead if it was the last one."""

    def __init__(self, message: str, retry_after: Optional[float] = None,
                 final: Optional[ModelScopeError] = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.final = final


# ----------------------------------------------------------------------------------------------
# Small public helpers


@dataclass(frozen=True)
class RepoFile:
    """One downloadable file of a repository listing."""

    path: str  # POSIX path relative to the repository root, validated safe
    size: int  # bytes, from the listing
    sha256: Optional[str]  # lower-case hex, or None when the mirror did not give one
    is_lfs: bool = False


def resolve_endpoint(endpoint: Optional[str] = None) -> str:
    """Return the mirror base URL: argument, else ``$MODELSCOPE_ENDPOINT``, else modelscope.cn."""
    base = endpoint or os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
    base = base.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", base):
        raise ModelScopeError(f"endpoint must be an http(s) URL, got {base!r}")
    return base


def resolve_cache_dir(cache_dir: Union[str, os.PathLike, None] = None) -> Path:
    """Return the cache root: the argument, else ``$GLM_MS_CACHE``, else ``~/.cache/glm_ms``."""
    raw = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV)
    path = Path(raw).expanduser() if raw else Path.home() / ".cache" / "glm_ms"
    return path.absolute()


def _split_model_id(model_id: str) -> Tuple[str, str]:
    if not isinstance(model_id, str):
        raise InvalidModelIdError(f"model id must be a string 'owner/name', got {model_id!r}")
    parts = model_id.split("/")
    if (len(parts) != 2 or any(p != p.strip() or p in ("", ".", "..") for p in parts)
            or any(c in model_id for c in "\\\0")):
        raise InvalidModelIdError(f"model id must look like 'owner/name', got {model_id!r}")
    return parts[0], parts[1]


def _safe_component(text: str) -> str:
    """Turn an owner, name or revision into one harmless folder name (collision-free)."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", text) and not text.endswith(".lock"):
        return text
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text).strip("._")[:80] or "_"
    return f"{cleaned}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:10]}"


def snapshot_path(model_id: str, revision: str = "master",
                  cache_dir: Union[str, os.PathLike, None] = None) -> Path:
    """Return the folder where ``snapshot_download`` puts ``model_id`` at ``revision``."""
    owner, name = _split_model_id(model_id)
    if not isinstance(revision, str) or not revision or "\0" in revision:
        raise ModelScopeError(f"revision must be a non-empty string, got {revision!r}")
    root = resolve_cache_dir(cache_dir) / "modelscope"
    return root / _safe_component(owner) / _safe_component(name) / _safe_component(revision)


# ----------------------------------------------------------------------------------------------
# Path safety and patterns


def _check_relpath(path: object) -> str:
    """Validate a listing path: relative POSIX, no ``..``/``.``/empty parts, backslash or NUL."""
    if not isinstance(path, str) or path == "":
        raise UnsafePathError(f"refusing empty or non-string path in listing: {path!r}")
    if "\0" in path:
        raise UnsafePathError(f"refusing path with NUL byte in listing: {path!r}")
    if "\\" in path:
        raise UnsafePathError(f"refusing path with backslash in listing: {path!r}")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise UnsafePathError(f"refusing absolute path in listing: {path!r}")
    parts = path.split("/")
    if any(p == ".." for p in parts):
        raise UnsafePathError(f"refusing path with '..' component in listing: {path!r}")
    if any(p in ("", ".") for p in parts):
        raise UnsafePathError(f"refusing path with empty or '.' component in listing: {path!r}")
    if path.endswith(INCOMPLETE_SUFFIX) or path == SNAPSHOT_MANIFEST:
        raise UnsafePathError(f"refusing path that collides with the client's own files: {path!r}")
    return path


def _destination(root: Path, relpath: str) -> Path:
    """Join a validated path onto the snapshot folder and prove it stays inside it."""
    dest = root.joinpath(*PurePosixPath(relpath).parts)
    real_root = root.resolve()
    real_dest = dest.resolve()
    if real_dest == real_root or real_root not in real_dest.parents:
        raise UnsafePathError(f"path {relpath!r} resolves to {real_dest}, outside {real_root}")
    return dest


def _as_patterns(patterns: Union[str, Iterable[str], None]) -> Optional[List[str]]:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return [patterns]
    return list(patterns)


def _selected(path: str, allow: Optional[List[str]], ignore: Optional[List[str]]) -> bool:
    if allow is not None and not any(fnmatch.fnmatchcase(path, p) for p in allow):
        return False
    return not (ignore and any(fnmatch.fnmatchcase(path, p) for p in ignore))


# ----------------------------------------------------------------------------------------------
# HTTP plumbing


@dataclass(frozen=True)
class _Policy:
    timeout: Tuple[float, float]  # (connect, read) seconds; read bounds every stall
    max_retries: int
    backoff: float
    max_backoff: float

    def delay(self, attempt: int, retry_after: Optional[float]) -> float:
        if retry_after is not None:  # the server knows best, but never wait unbounded
            return max(0.0, min(retry_after, self.max_backoff))
        base = min(self.max_backoff, self.backoff * (2 ** attempt))
        return base * (1.0 + 0.1 * random.random())


def _policy(timeout: Timeout, max_retries: int, backoff: float, max_backoff: float) -> _Policy:
    pair = (float(timeout), float(timeout)) if isinstance(timeout, (int, float)) else \
        (float(timeout[0]), float(timeout[1]))
    if max_retries < 0:
        raise ValueError("max_retries must be >= 0")
    return _Policy(pair, int(max_retries), float(backoff), float(max_backoff))


def _retrying(policy: _Policy, what: str, action: Callable[[], object]):
    """Run ``action`` until it stops raising ``_Transient``; at most ``max_retries`` retries."""
    last: Optional[_Transient] = None
    for attempt in range(policy.max_retries + 1):
        try:
            return action()
        except _Transient as exc:
            last = exc
            if attempt < policy.max_retries:
                _sleep(policy.delay(attempt, exc.retry_after))
    assert last is not None
    if last.final is not None:
        raise last.final
    raise ModelScopeError(f"{what}: giving up after {policy.max_retries + 1} attempts: {last}")


def _retry_after(resp: requests.Response) -> Optional[float]:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _snippet(resp: requests.Response) -> str:
    try:
        data = next(resp.iter_content(300), b"")
    except Exception:  # noqa: BLE001 - only used to decorate an error message
        return ""
    return data.decode("utf-8", "replace").strip()


def _get(session: requests.Session, url: str, policy: _Policy,
         headers: Optional[Dict[str, str]] = None) -> requests.Response:
    """One GET; network failures, 408, 429 and 5xx become ``_Transient``."""
    try:
        resp = session.get(url, headers=headers, timeout=policy.timeout, stream=True,
                           allow_redirects=True)
    except requests.RequestException as exc:
        raise _Transient(f"{type(exc).__name__} for {url}: {exc}") from exc
    if resp.status_code in (408, 429) or resp.status_code >= 500:
        retry_after = _retry_after(resp)
        resp.close()
        raise _Transient(f"HTTP {resp.status_code} for {url}", retry_after=retry_after)
    return resp


# ----------------------------------------------------------------------------------------------
# Listing


def _api_base(endpoint: str, model_id: str) -> str:
    owner, name = _split_model_id(model_id)
    return f"{endpoint}/api/v1/models/{quote(owner, safe='')}/{quote(name, safe='')}"


def _parse_entry(raw: dict, url: str) -> RepoFile:
    path = _check_relpath(raw.get("Path", raw.get("Name")))
    size = raw.get("Size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ModelScopeError(f"listing entry {path!r} has no valid Size ({size!r}) at {url}")
    sha = raw.get("Sha256") or None
    if sha is not None:
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
            raise ModelScopeError(f"listing entry {path!r} has a malformed Sha256 {sha!r} at {url}")
        sha = sha.lower()
    return RepoFile(path=path, size=size, sha256=sha, is_lfs=bool(raw.get("IsLFS", False)))


def _list(session: requests.Session, endpoint: str, model_id: str, revision: str,
          policy: _Policy) -> List[RepoFile]:
    url = (f"{_api_base(endpoint, model_id)}/repo/files"
           f"?Revision={quote_plus(revision)}&Recursive=True")

    def attempt() -> List[RepoFile]:
        resp = _get(session, url, policy)
        with resp:
            if resp.status_code == 404:
                raise ModelNotFoundError(
                    f"model {model_id!r} not found on {endpoint} (HTTP 404 for {url}): "
                    f"{_snippet(resp)}")
            if resp.status_code != 200:
                raise ModelScopeError(f"HTTP {resp.status_code} listing {model_id!r} at {url}: "
                                      f"{_snippet(resp)}")
            try:
                body = resp.json()
            except ValueError as exc:
                raise _Transient(f"listing at {url} is not JSON: {exc}") from exc
        if not isinstance(body, dict) or body.get("Success") is False or \
                body.get("Code", 200) != 200:
            message = body.get("Message") if isinstance(body, dict) else body
            raise ModelScopeError(f"mirror refused listing {model_id!r}@{revision} at {url}: "
                                  f"{message!r}")
        data = body.get("Data")
        files = data.get("Files") if isinstance(data, dict) else None
        if files is None:
            raise RevisionNotFoundError(
                f"revision {revision!r} of model {model_id!r} not found on {endpoint} "
                f"(listing answered \"Files\": null at {url})")
        if not isinstance(files, list):
            raise ModelScopeError(f"listing at {url} has a malformed Files field")
        return _parse_listing(files, url)

    return _retrying(policy, f"listing {model_id!r}@{revision}", attempt)


def _parse_listing(files: list, url: str) -> List[RepoFile]:
    out: Dict[str, RepoFile] = {}
    for raw in files:
        if not isinstance(raw, dict):
            raise ModelScopeError(f"listing at {url} holds a non-object entry {raw!r}")
        if raw.get("Type", "blob") != "blob":
            continue  # folders ("tree") are created on demand
        entry = _parse_entry(raw, url)
        seen = out.get(entry.path)
        if seen is not None and seen != entry:
            raise ModelScopeError(f"listing at {url} lists {entry.path!r} twice, differently")
        out[entry.path] = entry
    return [out[p] for p in sorted(out)]


def list_repo_files(model_id: str, revision: str = "master", endpoint: Optional[str] = None, *,
                    timeout: Timeout = (10.0, 60.0), max_retries: int = 5, backoff: float = 1.0,
                    max_backoff: float = 30.0,
                    session: Optional[requests.Session] = None) -> List[RepoFile]:
    """List the files (blobs) of ``model_id`` at ``revision``, every path validated safe."""
    _split_model_id(model_id)
    policy = _policy(timeout, max_retries, backoff, max_backoff)
    with _session(session) as sess:
        return _list(sess, resolve_endpoint(endpoint), model_id, revision, policy)


@contextlib.contextmanager
def _session(session: Optional[requests.Session]) -> Iterator[requests.Session]:
    if session is not None:
        yield session
        return
    sess = requests.Session()
    sess.headers["User-Agent"] = _USER_AGENT
    try:
        yield sess
    finally:
        sess.close()


# ----------------------------------------------------------------------------------------------
# Download of one file


def _hash_file(path: Path, hasher=None, limit: Optional[int] = None):
    hasher = hasher or hashlib.sha256()
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


def _matches(path: Path, entry: RepoFile) -> bool:
    """True when ``path`` holds exactly the listed bytes (hashing when a Sha256 is known)."""
    try:
        if not path.is_file() or path.stat().st_size != entry.size:
            return False
    except OSError:
        return False
    return entry.sha256 is None or _hash_file(path).hexdigest() == entry.sha256


def _content_range_start(resp: requests.Response) -> Optional[int]:
    match = re.match(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", resp.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _download_file(session: requests.Session, url: str, dest: Path, entry: RepoFile,
                   policy: _Policy, model_id: str, progress: bool) -> None:
    tmp = dest.with_name(dest.name + INCOMPLETE_SUFFIX)
    dest.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=entry.size, unit="B", unit_scale=True, unit_divisor=1024,
               desc=entry.path, disable=not progress, leave=False)

    def integrity_failure(what: str, expected: object, got: object) -> _Transient:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # unverified bytes never survive an integrity failure
        msg = (f"{entry.path!r} of {model_id!r}: {what} mismatch, listing says {expected}, "
               f"downloaded {got} (from {url})")
        return _Transient(msg, final=IntegrityError(msg))

    def open_stream(offset: int) -> Tuple[requests.Response, int]:
        headers = {"Accept-Encoding": "identity"}  # byte offsets must mean file offsets
        if offset:
            headers["Range"] = f"bytes={offset}-"
        resp = _get(session, url, policy, headers)
        if resp.status_code == 404:
            resp.close()
            raise EntryNotFoundError(f"{entry.path!r} is listed in {model_id!r} but the mirror "
                                     f"answered HTTP 404 for {url}")
        if offset and resp.status_code == 206 and _content_range_start(resp) == offset:
            return resp, offset  # a genuine continuation
        if resp.status_code == 200:
            return resp, 0  # Range ignored (or not asked): the body is the whole file
        resp.close()
        if offset and resp.status_code in (206, 416):
            # A 206 not starting at our offset (or an unsatisfiable range): start again from zero.
            return open_stream(0)
        raise ModelScopeError(f"unexpected HTTP {resp.status_code} downloading {entry.path!r} "
                              f"from {url}")

    def attempt() -> None:
        offset = tmp.stat().st_size if tmp.exists() else 0
        if offset > entry.size:
            offset = 0
        if offset and offset == entry.size:  # complete but never renamed (e.g. killed)
            if _matches(tmp, entry):
                os.replace(tmp, dest)
                return
            offset = 0
        resp, offset = open_stream(offset)
        hasher = hashlib.sha256()
        if offset:
            _hash_file(tmp, hasher, limit=offset)
        bar.reset(total=entry.size)
        bar.update(offset)
        written = offset
        received = 0
        overflow = False
        with resp, open(tmp, "r+b" if offset else "wb") as f:
            f.seek(offset)
            f.truncate()
            try:
                for chunk in resp.iter_content(_CHUNK):
                    if not chunk:
                        continue
                    if written + len(chunk) > entry.size:  # never store more than announced
                        overflow = True
                        break
                    f.write(chunk)
                    hasher.update(chunk)
                    written += len(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except requests.RequestException as exc:
                # Cut off or stalled: keep the partial file, the next attempt resumes it.
                raise _Transient(f"{type(exc).__name__} while reading {url}: {exc}") from exc
            f.flush()
            os.fsync(f.fileno())
        if overflow:
            raise integrity_failure("size", entry.size, f"more than {entry.size} bytes")
        announced = resp.headers.get("Content-Length")
        if announced is not None and announced.isdigit() and received < int(announced):
            raise _Transient(f"body of {url} ended after {received} of {announced} bytes")
        if written != entry.size:
            raise integrity_failure("size", entry.size, written)
        if entry.sha256 is not None and hasher.hexdigest() != entry.sha256:
            raise integrity_failure("sha256", entry.sha256, hasher.hexdigest())
        os.replace(tmp, dest)  # atomic: the final name only ever holds verified bytes

    try:
        _retrying(policy, f"downloading {entry.path!r} of {model_id!r} from {url}", attempt)
    finally:
        bar.close()


# ----------------------------------------------------------------------------------------------
# Snapshot manifest


def _read_manifest(folder: Path) -> Optional[dict]:
    try:
        with open(folder / SNAPSHOT_MANIFEST, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != _MANIFEST_VERSION:
        return None
    try:
        data["listing"] = [RepoFile(_check_relpath(e["path"]), int(e["size"]), e.get("sha256"),
                                    bool(e.get("is_lfs", False))) for e in data["listing"]]
        for path, rec in data["files"].items():
            _check_relpath(path)
            int(rec["size"]), int(rec["mtime_ns"])
    except (KeyError, TypeError, ValueError, AttributeError, UnsafePathError):
        return None
    return data


def _write_manifest(folder: Path, model_id: str, revision: str, endpoint: str,
                    listing: Sequence[RepoFile], files: Dict[str, dict]) -> None:
    data = {
        "version": _MANIFEST_VERSION,
        "model_id": model_id,
        "revision": revision,
        "endpoint": endpoint,
        "listing": [{"path": e.path, "size": e.size, "sha256": e.sha256, "is_lfs": e.is_lfs}
                    for e in listing],
        "files": {p: files[p] for p in sorted(files)},
    }
    tmp = folder / (SNAPSHOT_MANIFEST + INCOMPLETE_SUFFIX)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / SNAPSHOT_MANIFEST)


def _record(path: Path, entry: RepoFile) -> dict:
    st = path.stat()
    return {"size": st.st_size, "sha256": entry.sha256, "mtime_ns": st.st_mtime_ns}


def _trusted(folder: Path, entry: RepoFile, rec: Optional[dict]) -> bool:
    """True when the manifest verified this exact file and it has not been touched since."""
    if rec is None or rec.get("sha256") != entry.sha256 or rec.get("size") != entry.size:
        return False
    try:
        st = _destination(folder, entry.path).stat()
    except (OSError, UnsafePathError):
        return False
    return st.st_size == rec["size"] and st.st_mtime_ns == rec["mtime_ns"]


def _complete_offline(folder: Path, model_id: str, revision: str,
                      allow: Optional[List[str]], ignore: Optional[List[str]]) -> bool:
    """True when the manifest proves every wanted file is present and verified (no network)."""
    manifest = _read_manifest(folder)
    if manifest is None or manifest.get("model_id") != model_id or \
            manifest.get("revision") != revision:
        return False
    files = manifest["files"]
    changed = False
    for entry in manifest["listing"]:
        if not _selected(entry.path, allow, ignore):
            continue
        rec = files.get(entry.path)
        if _trusted(folder, entry, rec):
            continue
        if rec is None or rec.get("sha256") != entry.sha256:
            return False
        dest = _destination(folder, entry.path)
        if not _matches(dest, entry):  # touched since: re-hash before trusting it again
            return False
        files[entry.path] = _record(dest, entry)
        changed = True
    if changed:
        _write_manifest(folder, model_id, revision, manifest.get("endpoint", ""),
                        manifest["listing"], files)
    return True


# ----------------------------------------------------------------------------------------------
# Snapshot


def snapshot_download(model_id: str, revision: str = "master",
                      cache_dir: Union[str, os.PathLike, None] = None,
                      endpoint: Optional[str] = None,
                      allow_patterns: Union[str, Iterable[str], None] = None,
                      ignore_patterns: Union[str, Iterable[str], None] = ("*.py",),
                      timeout: Timeout = (10.0, 60.0), max_retries: int = 5,
                      progress: bool = True, *, force: bool = False, backoff: float = 1.0,
                      max_backoff: float = 30.0,
                      session: Optional[requests.Session] = None) -> Path:
    """Download ``model_id`` at ``revision`` into the cache, verified, and return its folder.

    Patterns are ``fnmatch`` patterns on the repository path; ``*.py`` is ignored by default
    because upstream code is never executed. ``timeout`` is ``(connect, read)`` seconds (the read
    timeout bounds any stall); each file and the listing are retried ``max_retries`` times with
    exponential back-off from ``backoff`` seconds, ``Retry-After`` honoured, every wait capped at
    ``max_backoff``. A complete snapshot is returned without any HTTP request unless ``force``,
    which re-lists and re-hashes (files that still match are kept). Interrupted downloads leave
    only ``<file>.incomplete``, resumed on the next call.
    """
    folder = snapshot_path(model_id, revision, cache_dir)
    allow, ignore = _as_patterns(allow_patterns), _as_patterns(ignore_patterns)
    if not force and _complete_offline(folder, model_id, revision, allow, ignore):
        return folder
    policy = _policy(timeout, max_retries, backoff, max_backoff)
    base = resolve_endpoint(endpoint)
    with file_lock(folder.parent / f".{folder.name}.lock"):  # one download of a snapshot at a time
        if not force and _complete_offline(folder, model_id, revision, allow, ignore):
            return folder  # another process finished it while we waited for the lock
        with _session(session) as sess:
            listing = _list(sess, base, model_id, revision, policy)
            folder.mkdir(parents=True, exist_ok=True)
            # Every path is checked before a single byte is fetched.
            wanted = [(e, _destination(folder, e.path)) for e in listing
                      if _selected(e.path, allow, ignore)]
            old = _read_manifest(folder) or {"files": {}}
            old_files = old["files"] if old.get("model_id") == model_id else {}
            verified: Dict[str, dict] = {}
            for entry, dest in wanted:
                if (not force and _trusted(folder, entry, old_files.get(entry.path))) \
                        or _matches(dest, entry):
                    verified[entry.path] = _record(dest, entry)
                    continue
                url = (f"{_api_base(base, model_id)}/repo?Revision={quote_plus(revision)}"
                       f"&FilePath={quote_plus(entry.path)}")
                _download_file(sess, url, dest, entry, policy, model_id, progress)
                verified[entry.path] = _record(dest, entry)
        # Keep records of files fetched earlier with other patterns, if the listing still agrees.
        by_path = {e.path: e for e in listing}
        for path, rec in old_files.items():
            entry = by_path.get(path)
            if path not in verified and entry is not None and _trusted(folder, entry, rec):
                verified[path] = rec
        _write_manifest(folder, model_id, revision, base, listing, verified)
    return folder
