"""A fake ModelScope mirror for tests: real API shapes, served from local folders, with faults.

Usage::

    from tests.fake_modelscope import LISTING, serve

    with serve({"ZhipuAI/ChatGLM-6B": Path("tests/fixtures/tiny-chatglm-6b")}) as hub:
        hub.faults.add("config.json", "status", code=503, retry_after=1, times=2)
        folder = snapshot_download("ZhipuAI/ChatGLM-6B", endpoint=hub.url, cache_dir=tmp_path)
        assert hub.count(kind="download", file="config.json") == 3
        assert hub.count() == len(hub.requests)

``serve(repos, *, redirect_threshold=100_000, honour_range=True, handler_timeout=10.0)``:

* ``repos`` maps ``"owner/name"`` to a folder (revision ``master``) or to ``{revision: folder}``.
  Files are read on every request (Size/Sha256 are recomputed when a file changes), so a test may
  edit a folder while the server runs. ``.git`` folders are not served.
* Protocol (DESIGN.md): ``GET /api/v1/models/{owner}/{name}/repo/files?Revision=&Recursive=True``
  lists (``"Files": null`` for an unknown revision, 404 + JSON for an unknown model);
  ``GET /api/v1/models/{owner}/{name}/repo?Revision=&FilePath=`` downloads. Files of at least
  ``redirect_threshold`` bytes (``0``: every file, ``None``: none) answer ``302`` to
  ``{url}/files/<token>``; both places honour ``Range: bytes=N-`` (206 + ``Content-Range``)
  unless ``honour_range=False``.
* ``hub.requests`` is a copy of every request seen so far (``RecordedRequest``: method, path,
  query, headers, kind = ``list``/``download``/``file``/``other``, repo, revision, file, status);
  ``hub.count(**attrs)`` counts those whose attributes equal the given values;
  ``hub.clear_requests()`` forgets them.
* ``hub.faults.add(path, kind, *, times=1, repo=None, **params)`` injects a fault for the next
  ``times`` matching events (``times=None``: forever); ``path`` is a repository file path or
  ``LISTING`` for the listing itself. Kinds:

  - listing (``path=LISTING``): ``status`` (``code``, ``retry_after``), ``stall`` (``seconds``,
    before any header), ``files_null``, ``not_json``, ``extra_entries`` (``paths``: extra blob
    entries, e.g. ``"../x"``, ``"/etc/x"``, ``"a/../../x"``, ``"a\\..\\x"``, whose download
    serves ``content``, default ``b"pwned\\n"`` -- a client that fetched them would write them),
    ``endless`` (a JSON-looking body that never ends, sent as fast as the client reads),
    ``trickle`` (a body that never ends, one byte every ``interval`` seconds, default 0.05),
    ``gzip_bomb`` (``Content-Encoding: gzip`` although identity was asked: ~250 KB that inflate to
    ``expanded`` bytes, default 256 MiB), ``gzip`` (the true listing, gzip-encoded as two gzip members);
  - listing entry of a file: ``wrong_sha256``, ``wrong_size`` (``delta``, default +1),
    ``missing_sha256``;
  - first hop of a download (the ``/repo`` endpoint): ``status`` (``code`` e.g. 404, 429, 500,
    503; ``retry_after`` seconds);
  - wherever the body is sent (after any redirect): ``cut`` (full ``Content-Length``, the body
    stops at file offset ``at`` -- default half the file -- and the connection closes), ``stall``
    (the body stops at ``at``, a pause of ``seconds``, then close; ``at=0`` pauses before the
    headers), ``ignore_range``
    (200 + whole file even when ``Range`` was asked), ``wrong_content_range`` (206 whose
    ``Content-Range`` starts at 0, whole file), ``empty_body`` (200, zero bytes), ``corrupt``
    (one byte flipped, correct length).

The server binds 127.0.0.1 on a free port, handler threads are daemons with a socket timeout of
``handler_timeout`` seconds, stalls are cut short when the context exits, and leaving the context
shuts the server down and closes its socket.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import json
import os
import threading
import uuid
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union
from urllib.parse import parse_qs, urlsplit

LISTING = "<listing>"

_LISTING_FAULTS = {"status", "stall", "files_null", "not_json", "extra_entries", "endless", "trickle", "gzip_bomb",
                   "gzip"}
_HOSTILE_BODIES = {"endless", "trickle", "gzip_bomb"}
_ENTRY_FAULTS = {"wrong_sha256", "wrong_size", "missing_sha256"}
_HOP_FAULTS = {"status"}
_BODY_FAULTS = {"cut", "stall", "ignore_range", "wrong_content_range", "empty_body", "corrupt"}


@dataclass
class Fault:
    """One injected fault; ``hits`` counts how often it fired."""

    path: str
    kind: str
    times: Optional[int] = 1
    repo: Optional[str] = None
    params: dict = field(default_factory=dict)
    hits: int = 0


class Faults:
    """Thread-safe registry of injected faults (see the module docstring for the kinds)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: List[Fault] = []

    def add(self, path: str, kind: str, *, times: Optional[int] = 1, repo: Optional[str] = None,
            **params) -> Fault:
        """Inject ``kind`` for ``path`` (a file path or ``LISTING``) for ``times`` events."""
        known = _LISTING_FAULTS if path == LISTING else _ENTRY_FAULTS | _HOP_FAULTS | _BODY_FAULTS
        if kind not in known:
            raise ValueError(f"unknown fault kind {kind!r} for {path!r}")
        if kind == "gzip_bomb":  # built now, so that serving it takes no longer than any answer
            params["body"] = _gzip_bomb(int(params.get("expanded", 256 << 20)))
        fault = Fault(path, kind, times, repo, dict(params))
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._faults.clear()

    def take(self, repo: str, path: str, kinds) -> Optional[Fault]:
        """Consume and return the first live fault of one of ``kinds`` for ``repo``/``path``."""
        with self._lock:
            for fault in self._faults:
                if fault.path == path and fault.kind in kinds and fault.repo in (None, repo) \
                        and (fault.times is None or fault.times > 0):
                    if fault.times is not None:
                        fault.times -= 1
                    fault.hits += 1
                    return fault
        return None

    def take_all(self, repo: str, path: str, kinds) -> List[Fault]:
        """Consume every live fault of ``kinds`` for ``repo``/``path`` (listing-time faults)."""
        out = []
        while True:
            fault = self.take(repo, path, kinds)
            if fault is None:
                return out
            out.append(fault)


@dataclass
class RecordedRequest:
    """One request as the server saw it."""

    method: str
    path: str
    query: Dict[str, str]
    headers: Dict[str, str]
    kind: str = "other"
    repo: Optional[str] = None
    revision: Optional[str] = None
    file: Optional[str] = None
    status: Optional[int] = None

    def header(self, name: str) -> Optional[str]:
        """Return a request header, case-insensitively."""
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


class FakeModelScope:
    """State of one running fake mirror: ``url``, ``requests``, ``faults``."""

    def __init__(self, repos: Dict[str, Union[Path, Dict[str, Path]]], redirect_threshold:
                 Optional[int], honour_range: bool):
        self.repos: Dict[str, Dict[str, Path]] = {
            repo: ({"master": Path(src)} if isinstance(src, (str, os.PathLike)) else
                   {rev: Path(p) for rev, p in src.items()})
            for repo, src in repos.items()}
        self.redirect_threshold = redirect_threshold
        self.honour_range = honour_range
        self.faults = Faults()
        self.url = ""
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._requests: List[RecordedRequest] = []
        self._sha_cache: Dict[Tuple[str, int, int], str] = {}
        self._tokens: Dict[str, Tuple[str, str, str]] = {}
        self._extra: Dict[Tuple[str, str, str], bytes] = {}

    # -- records ---------------------------------------------------------------------------
    @property
    def requests(self) -> List[RecordedRequest]:
        """A copy of every request recorded so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def count(self, **attrs) -> int:
        """Count recorded requests whose attributes equal ``attrs`` (all of them if none)."""
        return sum(all(getattr(r, k) == v for k, v in attrs.items()) for r in self.requests)

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self._requests.clear()

    def _record(self, rec: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(rec)

    # -- repository content ----------------------------------------------------------------
    def sha256(self, path: Path) -> str:
        """Sha256 of a served file, cached by (path, size, mtime)."""
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._sha_cache:
                return self._sha_cache[key]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        with self._lock:
            self._sha_cache[key] = digest
        return digest

    def files(self, repo: str, revision: str) -> List[Tuple[str, Path]]:
        """(repository path, local file) pairs of one revision, sorted."""
        root = self.repos[repo][revision]
        out = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != ".git")
            for name in sorted(filenames):
                local = Path(dirpath) / name
                out.append((local.relative_to(root).as_posix(), local))
        return out

    def local_file(self, repo: str, revision: str, path: str) -> Optional[Path]:
        """The local file behind a repository path, or None (never outside the repo folder)."""
        root = self.repos[repo][revision].resolve()
        candidate = (root / path).resolve()
        if root not in candidate.parents or not candidate.is_file():
            return None
        return candidate

    def token(self, repo: str, revision: str, path: str) -> str:
        """Opaque redirect-target name for one file."""
        tok = hashlib.sha1(f"{repo}\0{revision}\0{path}".encode()).hexdigest()
        with self._lock:
            self._tokens[tok] = (repo, revision, path)
        return tok


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeModelScope/1.0"
    hub: FakeModelScope  # set on the subclass made by ``serve``
    rec: RecordedRequest

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    # -- plumbing ----------------------------------------------------------------------------
    def send_response(self, code, message=None):
        self.rec.status = code
        super().send_response(code, message)

    def _send(self, code: int, body: bytes = b"", headers: Optional[Dict[str, str]] = None,
              content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _json(self, code: int, payload: object, headers: Optional[Dict[str, str]] = None) -> None:
        self._send(code, json.dumps(payload).encode("utf-8"), headers)

    def _error(self, code: int, message: str, headers: Optional[Dict[str, str]] = None) -> None:
        self._json(code, {"Code": code if code != 404 else 10010205001, "Message": message,
                          "RequestId": str(uuid.uuid4()), "Success": False}, headers)

    def _status_fault(self, fault) -> None:
        code = int(fault.params.get("code", 500))
        headers = {}
        if fault.params.get("retry_after") is not None:
            headers["Retry-After"] = str(fault.params["retry_after"])
        self._error(code, f"injected HTTP {code}", headers)

    def _pause(self, seconds: float) -> None:
        self.hub.stop.wait(seconds)
        self.close_connection = True

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client went away or idled past the handler timeout: no traceback

    # -- routing -----------------------------------------------------------------------------
    def do_GET(self):  # noqa: N802 - http.server naming
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        self.rec = RecordedRequest("GET", parts.path, query, dict(self.headers.items()))
        self.hub._record(self.rec)
        segs = parts.path.split("/")
        try:
            if len(segs) == 8 and segs[1:4] == ["api", "v1", "models"] and \
                    segs[6:] == ["repo", "files"]:
                self._listing(f"{segs[4]}/{segs[5]}", query)
            elif len(segs) == 7 and segs[1:4] == ["api", "v1", "models"] and segs[6] == "repo":
                self._download(f"{segs[4]}/{segs[5]}", query)
            elif len(segs) == 3 and segs[1] == "files":
                self._redirect_target(segs[2])
            else:
                self._error(404, "no such endpoint")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (e.g. after its read timeout)

    def do_HEAD(self):  # noqa: N802
        self.rec = RecordedRequest("HEAD", self.path, {}, dict(self.headers.items()))
        self.hub._record(self.rec)
        self._send(405)

    def _listing(self, repo: str, query: Dict[str, str]) -> None:
        hub = self.hub
        revision = query.get("Revision", "master")
        self.rec.kind, self.rec.repo, self.rec.revision = "list", repo, revision
        fault = hub.faults.take(repo, LISTING, {"status", "stall", "files_null", "not_json", "gzip",
                                                *_HOSTILE_BODIES})
        if fault is not None and fault.kind in _HOSTILE_BODIES:
            return self._hostile_body(fault)
        if fault is not None and fault.kind == "status":
            return self._status_fault(fault)
        if fault is not None and fault.kind == "stall":
            return self._pause(float(fault.params.get("seconds", 5.0)))
        if fault is not None and fault.kind == "not_json":
            return self._send(200, b"<html>maintenance</html>", content_type="text/html")
        if repo not in hub.repos:
            return self._error(404, f"model {repo} not found")
        commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
        envelope = {"Code": 200, "Message": "success", "RequestId": str(uuid.uuid4()),
                    "Success": True}
        if revision not in hub.repos[repo] or (fault is not None and fault.kind == "files_null"):
            return self._json(200, dict(envelope, Data={"Files": None}))
        entries, dirs = [], set()
        for path, local in hub.files(repo, revision):
            parent = path.rsplit("/", 1)[0] if "/" in path else ""
            while parent and parent not in dirs:
                dirs.add(parent)
                entries.append({"Name": parent.rsplit("/", 1)[-1], "Path": parent, "Type": "tree",
                                "Size": 0, "Sha256": "", "IsLFS": False, "Revision": commit})
                parent = parent.rsplit("/", 1)[0] if "/" in parent else ""
            size = local.stat().st_size
            entry = {"Name": path.rsplit("/", 1)[-1], "Path": path, "Type": "blob", "Size": size,
                     "Sha256": hub.sha256(local), "IsLFS": size >= 100_000, "Revision": commit}
            for f in hub.faults.take_all(repo, path, _ENTRY_FAULTS):
                if f.kind == "wrong_sha256":
                    entry["Sha256"] = hashlib.sha256(b"not " + path.encode()).hexdigest()
                elif f.kind == "wrong_size":
                    entry["Size"] = size + int(f.params.get("delta", 1))
                else:
                    entry["Sha256"] = ""
            entries.append(entry)
        for f in hub.faults.take_all(repo, LISTING, {"extra_entries"}):
            content = f.params.get("content", b"pwned\n")
            for path in f.params.get("paths", ["../x"]):
                with hub._lock:
                    hub._extra[(repo, revision, path)] = content
                entries.append({"Name": path.rsplit("/", 1)[-1], "Path": path, "Type": "blob",
                                "Size": len(content),
                                "Sha256": hashlib.sha256(content).hexdigest(),
                                "IsLFS": False, "Revision": commit})
        payload = dict(envelope, Data={"Files": entries, "IsVisual": 0})
        if fault is not None and fault.kind == "gzip":
            raw = json.dumps(payload).encode("utf-8")
            half = len(raw) // 2
            body = gzip.compress(raw[:half]) + gzip.compress(raw[half:])  # a gzip body may hold several members
            return self._send(200, body, {"Content-Encoding": "gzip"})
        self._json(200, payload)

    def _hostile_body(self, fault) -> None:
        """A 200 listing whose body never ends, or inflates far beyond its size."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if fault.kind == "gzip_bomb":
            body = fault.params["body"]
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_header("Connection", "close")  # no length: the body ends when the connection does
        self.end_headers()
        self.close_connection = True
        self.wfile.write(b'{"Code": 200, "Success": true, "Data": {"Files": [')
        filler = b" " * (1 << 16) if fault.kind == "endless" else b" "
        interval = 0.0 if fault.kind == "endless" else float(fault.params.get("interval", 0.05))
        while not self.hub.stop.is_set():
            self.wfile.write(filler)
            self.wfile.flush()
            if interval:
                self.hub.stop.wait(interval)

    def _content(self, repo: str, revision: str, path: str) -> Optional[bytes]:
        hub = self.hub
        with hub._lock:
            extra = hub._extra.get((repo, revision, path))
        if extra is not None:
            return extra
        local = hub.local_file(repo, revision, path) if revision in hub.repos.get(repo, {}) \
            else None
        return local.read_bytes() if local is not None else None

    def _download(self, repo: str, query: Dict[str, str]) -> None:
        hub = self.hub
        revision, path = query.get("Revision", "master"), query.get("FilePath", "")
        self.rec.kind, self.rec.repo, self.rec.revision, self.rec.file = \
            "download", repo, revision, path
        fault = hub.faults.take(repo, path, _HOP_FAULTS)
        if fault is not None:
            return self._status_fault(fault)
        if repo not in hub.repos:
            return self._error(404, f"model {repo} not found")
        data = self._content(repo, revision, path)
        if data is None:
            return self._error(404, f"file {path} not found at {revision}")
        threshold = hub.redirect_threshold
        if threshold is not None and len(data) >= threshold:
            location = f"{hub.url}/files/{hub.token(repo, revision, path)}"
            return self._send(302, b"", {"Location": location}, content_type="text/plain")
        self._body(repo, path, data)

    def _redirect_target(self, token: str) -> None:
        hub = self.hub
        with hub._lock:
            target = hub._tokens.get(token)
        if target is None:
            return self._error(404, "unknown file token")
        repo, revision, path = target
        self.rec.kind, self.rec.repo, self.rec.revision, self.rec.file = \
            "file", repo, revision, path
        data = self._content(repo, revision, path)
        if data is None:
            return self._error(404, "file vanished")
        self._body(repo, path, data)

    def _body(self, repo: str, path: str, data: bytes) -> None:
        """Send ``data`` honouring ``Range: bytes=N-[M]``, applying any body fault."""
        fault = self.hub.faults.take(repo, path, _BODY_FAULTS)
        kind = fault.kind if fault else None
        size = len(data)
        start, end = _parse_range(self.headers.get("Range"), size) \
            if self.hub.honour_range and kind != "ignore_range" else (None, None)
        if kind == "stall" and fault.params.get("at") == 0:
            return self._pause(float(fault.params.get("seconds", 5.0)))
        if start == "unsatisfiable":
            return self._send(416, b"", {"Content-Range": f"bytes */{size}"}, "text/plain")
        headers = {"Accept-Ranges": "bytes", "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
        if kind == "empty_body":
            return self._send(200, b"", headers, "application/octet-stream")
        if kind == "wrong_content_range" and start is not None:
            headers["Content-Range"] = f"bytes 0-{size - 1}/{size}"
            code, body = 206, data
        elif start is not None:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            code, body = 206, data[start:end + 1]
        else:
            code, body = 200, data
        if kind == "corrupt" and body:
            body = body[:len(body) // 2] + bytes([body[len(body) // 2] ^ 0xFF]) + \
                body[len(body) // 2 + 1:]
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if kind in ("cut", "stall"):
            # ``at`` is a file offset; a ranged body starts at ``start``.
            at = fault.params.get("at")
            at = size // 2 if at is None else int(at)
            sent = min(max(at - (start or 0), 0), len(body))
            self.wfile.write(body[:sent])
            self.wfile.flush()
            if kind == "stall":
                self._pause(float(fault.params.get("seconds", 5.0)))
            self.close_connection = True  # the promised Content-Length is never reached
            return
        for i in range(0, len(body), 1 << 16):
            self.wfile.write(body[i:i + (1 << 16)])


@functools.lru_cache(maxsize=None)
def _gzip_bomb(expanded: int) -> bytes:
    """A gzip member of a JSON listing's start followed by `expanded` bytes of spaces."""
    packer = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [packer.compress(b'{"Code": 200, "Success": true, "Data": {"Files": [')]
    chunk = b" " * (1 << 20)
    for _ in range(expanded // len(chunk)):
        parts.append(packer.compress(chunk))
    parts.append(packer.flush())
    return b"".join(parts)


def _parse_range(header: Optional[str], size: int):
    """(start, end) of a single ``bytes=N-[M]`` range, (None, None) without one."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None, None
    first, _, last = header[len("bytes="):].partition("-")
    if not first.strip().isdigit():
        return None, None  # suffix ranges are not needed by the client; serve the whole file
    start = int(first)
    end = int(last) if last.strip().isdigit() else size - 1
    if start >= size:
        return "unsatisfiable", None
    return start, min(end, size - 1)


@contextlib.contextmanager
def serve(repos: Dict[str, Union[Path, Dict[str, Path]]], *,
          redirect_threshold: Optional[int] = 100_000, honour_range: bool = True,
          handler_timeout: float = 10.0) -> Iterator[FakeModelScope]:
    """Run a fake ModelScope mirror on 127.0.0.1 for ``repos``; yields ``FakeModelScope``."""
    hub = FakeModelScope(repos, redirect_threshold, honour_range)
    handler = type("Handler", (_Handler,), {"hub": hub, "timeout": handler_timeout})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    hub.url = f"http://{host}:{port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="fake-modelscope", daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.stop.set()  # wake any stalled handler
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
