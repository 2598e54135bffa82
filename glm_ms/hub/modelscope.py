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
  re-hashes). Files touched since are re-hashed offline before being trusted again;
* every remote body is bounded: the listing by ``MAX_LISTING_BYTES`` and ``listing_timeout``, a
  file by its listed Size; ``Accept-Encoding: identity`` is asked for, and a compressed answer is
  inflated a chunk at a time, never more than the bound;
* a listing naming one path both as a file and as a folder is refused, like unsafe paths.

The mirror's branch (``master``) can move; a cached snapshot is only refreshed with ``force=True``.
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Sequence
from urllib.parse import quote, quote_plus

import requests
from tqdm.auto import tqdm

from ..errors import ModelScopeError
from ..files import INCOMPLETE, atomic_write_json, file_lock, file_matches, update_hash, within
from .http import (InvalidArgumentError, Policy, Transient, body_chunks, get, make_policy, read_capped, retrying,
                   session_for, snippet)

__all__ = [
    "DEFAULT_ENDPOINT",
    "SNAPSHOT_MANIFEST",
    "INCOMPLETE_SUFFIX",
    "MAX_LISTING_BYTES",
    "LISTING_TIMEOUT",
    "ModelScopeError",
    "InvalidArgumentError",
    "InvalidModelIdError",
    "ModelNotFoundError",
    "RevisionNotFoundError",
    "EntryNotFoundError",
    "UnsafePathError",
    "IntegrityError",
    "RepoFile",
    "resolve_endpoint",
    "resolve_cache_dir",
    "split_model_id",
    "safe_component",
    "snapshot_path",
    "list_repo_files",
    "snapshot_download",
]

DEFAULT_ENDPOINT = "https://modelscope.cn"
ENDPOINT_ENV = "MODELSCOPE_ENDPOINT"
CACHE_ENV = "GLM_MS_CACHE"
SNAPSHOT_MANIFEST = ".glm_ms_snapshot.json"
INCOMPLETE_SUFFIX = INCOMPLETE
_MANIFEST_VERSION = 1
# A listing entry is ~250 bytes: 32 MB is over 100,000 files, far more than any model repository holds.
MAX_LISTING_BYTES = 32 << 20
LISTING_TIMEOUT = 120.0  # default seconds for the whole listing body


# ----------------------------------------------------------------------------------------------
# Errors


class InvalidModelIdError(InvalidArgumentError):
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


# ----------------------------------------------------------------------------------------------
# Small public helpers


@dataclass(frozen=True)
class RepoFile:
    """One downloadable file of a repository listing."""

    path: str  # POSIX path relative to the repository root, validated safe
    size: int  # bytes, from the listing
    sha256: str | None  # lower-case hex, or None when the mirror did not give one
    is_lfs: bool = False


def resolve_endpoint(endpoint: str | None = None) -> str:
    """Return the mirror base URL: argument, else ``$MODELSCOPE_ENDPOINT``, else modelscope.cn."""
    base = endpoint or os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
    base = base.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", base):
        raise ModelScopeError(f"endpoint must be an http(s) URL, got {base!r}")
    return base


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the cache root: the argument, else ``$GLM_MS_CACHE``, else ``~/.cache/glm_ms``."""
    raw = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV)
    path = Path(raw).expanduser() if raw else Path.home() / ".cache" / "glm_ms"
    return path.absolute()


def split_model_id(model_id: str) -> tuple[str, str]:
    """(owner, name) of a model id ``owner/name``; anything else is an InvalidModelIdError."""
    if not isinstance(model_id, str):
        raise InvalidModelIdError(f"model id must be a string 'owner/name', got {model_id!r}")
    parts = model_id.split("/")
    if (len(parts) != 2 or any(p != p.strip() or p in ("", ".", "..") for p in parts)
            or any(c in model_id for c in "\\\0")):
        raise InvalidModelIdError(f"model id must look like 'owner/name', got {model_id!r}")
    return parts[0], parts[1]


def safe_component(text: str) -> str:
    """Turn an owner, name or revision into one harmless folder name (collision-free)."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", text) and not text.endswith(".lock"):
        return text
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text).strip("._")[:80] or "_"
    return f"{cleaned}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:10]}"


def snapshot_path(model_id: str, revision: str = "master",
                  cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the folder where ``snapshot_download`` puts ``model_id`` at ``revision``."""
    owner, name = split_model_id(model_id)
    if not isinstance(revision, str) or not revision or "\0" in revision:
        raise ModelScopeError(f"revision must be a non-empty string, got {revision!r}")
    root = resolve_cache_dir(cache_dir) / "modelscope"
    return root / safe_component(owner) / safe_component(name) / safe_component(revision)


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


def _as_patterns(patterns: str | Iterable[str] | None) -> list[str] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return [patterns]
    return list(patterns)


def _selected(path: str, allow: list[str] | None, ignore: list[str] | None) -> bool:
    if allow is not None and not any(fnmatch.fnmatchcase(path, p) for p in allow):
        return False
    return not (ignore and any(fnmatch.fnmatchcase(path, p) for p in ignore))


# ----------------------------------------------------------------------------------------------
# Listing


def _api_base(endpoint: str, model_id: str) -> str:
    owner, name = split_model_id(model_id)
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
          policy: Policy) -> list[RepoFile]:
    url = (f"{_api_base(endpoint, model_id)}/repo/files"
           f"?Revision={quote_plus(revision)}&Recursive=True")

    def attempt() -> list[RepoFile]:
        resp = get(session, url, policy)
        with resp:
            if resp.status_code == 404:
                raise ModelNotFoundError(
                    f"model {model_id!r} not found on {endpoint} (HTTP 404 for {url}): "
                    f"{snippet(resp)}")
            if resp.status_code != 200:
                raise ModelScopeError(f"HTTP {resp.status_code} listing {model_id!r} at {url}: "
                                      f"{snippet(resp)}")
            raw = read_capped(resp, MAX_LISTING_BYTES, policy.listing_timeout, "listing")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise Transient(f"listing at {url} is not JSON: {exc}") from exc
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

    return retrying(policy, f"listing {model_id!r}@{revision}", attempt)


def _parse_listing(files: list, url: str) -> list[RepoFile]:
    out: dict[str, RepoFile] = {}
    for raw in files:
        if not isinstance(raw, dict):
            raise ModelScopeError(f"listing at {url} holds a non-object entry {raw!r:.200}")
        if raw.get("Type", "blob") != "blob":
            continue  # folders ("tree") are created on demand
        entry = _parse_entry(raw, url)
        seen = out.get(entry.path)
        if seen is not None and seen != entry:
            raise ModelScopeError(f"listing at {url} lists {entry.path!r} twice, differently")
        out[entry.path] = entry
    folders = {str(parent) for path in out for parent in PurePosixPath(path).parents} - {"."}
    clash = sorted(folders & set(out))
    if clash:
        raise UnsafePathError(f"listing at {url} holds {clash[0]!r} both as a file and as a folder")
    return [out[p] for p in sorted(out)]


def list_repo_files(model_id: str, revision: str = "master", endpoint: str | None = None, *,
                    timeout: float | tuple[float, float] = (10.0, 60.0), max_retries: int = 5, backoff: float = 1.0,
                    max_backoff: float = 30.0, listing_timeout: float = LISTING_TIMEOUT,
                    session: requests.Session | None = None) -> list[RepoFile]:
    """List the files (blobs) of ``model_id`` at ``revision``, every path validated safe."""
    split_model_id(model_id)
    policy = make_policy(timeout, max_retries, backoff, max_backoff, listing_timeout)
    with session_for(session) as sess:
        return _list(sess, resolve_endpoint(endpoint), model_id, revision, policy)


# ----------------------------------------------------------------------------------------------
# Download of one file


def _matches(path: Path, entry: RepoFile) -> bool:
    """True when ``path`` holds exactly the listed bytes (hashing when a Sha256 is known)."""
    return file_matches(path, entry.size, entry.sha256)


def _content_range_start(resp: requests.Response) -> int | None:
    match = re.match(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", resp.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


@dataclass
class _Download:
    """One file of a snapshot: fetched into ``<dest>.incomplete``, resumed, verified, then renamed."""

    session: requests.Session
    url: str
    root: Path  # the snapshot folder every path is confined to
    entry: RepoFile
    policy: Policy
    model_id: str
    bar: Any  # tqdm

    def run(self) -> None:
        self.dest = _destination(self.root, self.entry.path)
        self.tmp = _destination(self.root, self.entry.path + INCOMPLETE_SUFFIX)
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        retrying(self.policy, f"downloading {self.entry.path!r} of {self.model_id!r} from {self.url}",
                  self.attempt)

    def integrity_failure(self, what: str, expected: object, got: object) -> Transient:
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()  # unverified bytes never survive an integrity failure
        msg = (f"{self.entry.path!r} of {self.model_id!r}: {what} mismatch, listing says {expected}, "
               f"downloaded {got} (from {self.url})")
        return Transient(msg, final=IntegrityError(msg))

    def open_stream(self, offset: int) -> tuple[requests.Response, int]:
        resp = get(self.session, self.url, self.policy, {"Range": f"bytes={offset}-"} if offset else None)
        if resp.status_code == 404:
            resp.close()
            raise EntryNotFoundError(f"{self.entry.path!r} is listed in {self.model_id!r} but the mirror "
                                     f"answered HTTP 404 for {self.url}")
        if offset and resp.status_code == 206 and _content_range_start(resp) == offset:
            return resp, offset  # a genuine continuation
        if resp.status_code == 200:
            return resp, 0  # Range ignored (or not asked): the body is the whole file
        resp.close()
        if offset and resp.status_code in (206, 416):
            # A 206 not starting at our offset (or an unsatisfiable range): start again from zero.
            return self.open_stream(0)
        raise ModelScopeError(f"unexpected HTTP {resp.status_code} downloading {self.entry.path!r} from {self.url}")

    def attempt(self) -> None:
        size = self.entry.size
        offset = self.tmp.stat().st_size if self.tmp.exists() else 0
        if offset > size:
            offset = 0
        if offset and offset == size:  # complete but never renamed (e.g. killed)
            if _matches(self.tmp, self.entry):
                os.replace(self.tmp, self.dest)
                return
            offset = 0
        resp, offset = self.open_stream(offset)
        hasher = hashlib.sha256()
        if offset:
            update_hash(hasher, self.tmp, limit=offset)
        self.bar.reset(total=size)
        self.bar.update(offset)
        with resp:
            written, received = self.stream(resp, offset, hasher)
        if written > size:
            raise self.integrity_failure("size", size, f"more than {size} bytes")
        announced = resp.headers.get("Content-Length")
        identity = resp.headers.get("Content-Encoding", "identity").strip().lower() in ("", "identity")
        if identity and announced is not None and announced.isdigit() and received < int(announced):
            raise Transient(f"body of {self.url} ended after {received} of {announced} bytes")
        if written != size:
            raise self.integrity_failure("size", size, written)
        if self.entry.sha256 is not None and hasher.hexdigest() != self.entry.sha256:
            raise self.integrity_failure("sha256", self.entry.sha256, hasher.hexdigest())
        os.replace(self.tmp, self.dest)  # atomic: the final name only ever holds verified bytes

    def stream(self, resp: requests.Response, offset: int, hasher: Any) -> tuple[int, int]:
        """Append the body to the partial file; (bytes the file would hold, bytes received). Never stores more
        than the listing announced: one byte too many ends the read."""
        written, received = offset, 0
        with open(self.tmp, "r+b" if offset else "wb") as f:
            f.seek(offset)
            f.truncate()
            # A cut or stall raises Transient from body_chunks: the partial file is kept, the next attempt resumes it.
            for chunk in body_chunks(resp):
                if written + len(chunk) > self.entry.size:
                    return written + len(chunk), received
                f.write(chunk)
                hasher.update(chunk)
                written += len(chunk)
                received += len(chunk)
                self.bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        return written, received


# ----------------------------------------------------------------------------------------------
# Snapshot manifest


def _read_manifest(folder: Path) -> dict | None:
    """The snapshot's manifest, or None when there is none we can trust (absent, foreign, malformed)."""
    path = folder / SNAPSHOT_MANIFEST
    if not within(folder, path):
        return None
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_LISTING_BYTES + 1)
        data = json.loads(raw) if len(raw) <= MAX_LISTING_BYTES else None
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
                    listing: Sequence[RepoFile], files: dict[str, dict]) -> None:
    data = {
        "version": _MANIFEST_VERSION,
        "model_id": model_id,
        "revision": revision,
        "endpoint": endpoint,
        "listing": [{"path": e.path, "size": e.size, "sha256": e.sha256, "is_lfs": e.is_lfs}
                    for e in listing],
        "files": {p: files[p] for p in sorted(files)},
    }
    atomic_write_json(folder / SNAPSHOT_MANIFEST, data)


def _record(path: Path, entry: RepoFile) -> dict:
    st = path.stat()
    return {"size": st.st_size, "sha256": entry.sha256, "mtime_ns": st.st_mtime_ns}


def _trusted(folder: Path, entry: RepoFile, rec: dict | None) -> bool:
    """True when the manifest verified this exact file and it has not been touched since."""
    if rec is None or rec.get("sha256") != entry.sha256 or rec.get("size") != entry.size:
        return False
    try:
        st = _destination(folder, entry.path).stat()
    except (OSError, UnsafePathError):
        return False
    return st.st_size == rec["size"] and st.st_mtime_ns == rec["mtime_ns"]


def _complete_offline(folder: Path, model_id: str, revision: str,
                      allow: list[str] | None, ignore: list[str] | None) -> bool:
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


def _fetch(sess: requests.Session, base: str, folder: Path, model_id: str, revision: str, entries: list[RepoFile],
           old_files: dict[str, dict], force: bool, policy: Policy, progress: bool) -> dict[str, dict]:
    """Download every entry not verified already; returns the manifest records of all of them."""
    # Every path is checked before a single byte is fetched.
    wanted = [(e, _destination(folder, e.path)) for e in entries]
    verified: dict[str, dict] = {}
    for entry, dest in wanted:
        if not ((not force and _trusted(folder, entry, old_files.get(entry.path))) or _matches(dest, entry)):
            url = (f"{_api_base(base, model_id)}/repo?Revision={quote_plus(revision)}"
                   f"&FilePath={quote_plus(entry.path)}")
            with tqdm(total=entry.size, unit="B", unit_scale=True, unit_divisor=1024, desc=entry.path,
                      disable=not progress, leave=False) as bar:
                _Download(sess, url, folder, entry, policy, model_id, bar).run()
        verified[entry.path] = _record(dest, entry)
    return verified


def snapshot_download(model_id: str, revision: str = "master", cache_dir: str | os.PathLike | None = None,
                      endpoint: str | None = None, allow_patterns: str | Iterable[str] | None = None,
                      ignore_patterns: str | Iterable[str] | None = ("*.py",),
                      timeout: float | tuple[float, float] = (10.0, 60.0), max_retries: int = 5,
                      progress: bool = True, *, force: bool = False, backoff: float = 1.0,
                      max_backoff: float = 30.0, listing_timeout: float = LISTING_TIMEOUT,
                      session: requests.Session | None = None) -> Path:
    """Download ``model_id`` at ``revision`` into the cache, verified, and return its folder.

    Patterns are ``fnmatch`` patterns on the repository path; ``*.py`` is ignored by default because upstream
    code is never executed. ``timeout`` is ``(connect, read)`` seconds (the read timeout bounds any stall);
    the listing must arrive within ``listing_timeout`` seconds and MAX_LISTING_BYTES. Each file and the listing
    are retried ``max_retries`` times with exponential back-off from ``backoff`` seconds, ``Retry-After``
    honoured, every wait capped at ``max_backoff``. A complete snapshot is returned without any HTTP request
    unless ``force``, which re-lists and re-hashes (files that still match are kept). Interrupted downloads
    leave only ``<file>.incomplete``, resumed on the next call.
    """
    folder = snapshot_path(model_id, revision, cache_dir)
    allow, ignore = _as_patterns(allow_patterns), _as_patterns(ignore_patterns)
    if not force and _complete_offline(folder, model_id, revision, allow, ignore):
        return folder
    policy = make_policy(timeout, max_retries, backoff, max_backoff, listing_timeout)
    base = resolve_endpoint(endpoint)
    with file_lock(folder.parent / f".{folder.name}.lock"):  # one download of a snapshot at a time
        if not force and _complete_offline(folder, model_id, revision, allow, ignore):
            return folder  # another process finished it while we waited for the lock
        with session_for(session) as sess:
            listing = _list(sess, base, model_id, revision, policy)
            folder.mkdir(parents=True, exist_ok=True)
            old = _read_manifest(folder) or {"files": {}}
            old_files = old["files"] if old.get("model_id") == model_id else {}
            verified = _fetch(sess, base, folder, model_id, revision,
                              [e for e in listing if _selected(e.path, allow, ignore)], old_files, force, policy,
                              progress)
        # Keep records of files fetched earlier with other patterns, if the listing still agrees.
        by_path = {e.path: e for e in listing}
        for path, rec in old_files.items():
            entry = by_path.get(path)
            if path not in verified and entry is not None and _trusted(folder, entry, rec):
                verified[path] = rec
        _write_manifest(folder, model_id, revision, base, listing, verified)
    return folder
