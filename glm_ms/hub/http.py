"""HTTP for the mirror client: one GET with retries and back-off, bodies read undecoded and bounded.

Every body is taken from the socket as it arrives (`read1`), undecoded; a gzip or deflate answer is inflated here a
chunk at a time, so neither a body that never ends nor a small compressed one can grow memory beyond what the
caller accepts (`read_capped` for the listing, the listed Size for files).
"""
from __future__ import annotations

import contextlib
import email.utils
import random
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator

import requests
import urllib3

from ..errors import ModelScopeError

CHUNK = 1 << 16  # most bytes taken from the socket (or inflated) per step
USER_AGENT = "glm_ms/0.1 (+requests)"

# The pause between retries; tests record the delays instead of sleeping.
sleep: Callable[[float], None] = time.sleep


class InvalidArgumentError(ModelScopeError, ValueError):
    """An argument the client cannot use (an unknown mirror, a negative retry count)."""


class Transient(Exception):
    """One failed attempt worth retrying; ``final`` is raised instead if it was the last one."""

    def __init__(self, message: str, retry_after: float | None = None,
                 final: ModelScopeError | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.final = final


@dataclass(frozen=True)
class Policy:
    timeout: tuple[float, float]  # (connect, read) seconds; read bounds every stall
    max_retries: int
    backoff: float
    max_backoff: float
    listing_timeout: float  # seconds the whole listing body may take: a trickling mirror cannot hold us forever

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:  # the server knows best, but never wait unbounded
            return max(0.0, min(retry_after, self.max_backoff))
        base = min(self.max_backoff, self.backoff * (2 ** attempt))
        return base * (1.0 + 0.1 * random.random())


def make_policy(timeout: float | tuple[float, float], max_retries: int, backoff: float, max_backoff: float,
            listing_timeout: float) -> Policy:
    pair = (float(timeout), float(timeout)) if isinstance(timeout, (int, float)) else \
        (float(timeout[0]), float(timeout[1]))
    if max_retries < 0:
        raise InvalidArgumentError("max_retries must be >= 0")
    return Policy(pair, int(max_retries), float(backoff), float(max_backoff), float(listing_timeout))


def retrying(policy: Policy, what: str, action: Callable[[], object]):
    """Run ``action`` until it stops raising ``Transient``; at most ``max_retries`` retries."""
    last: Transient | None = None
    for attempt in range(policy.max_retries + 1):
        try:
            return action()
        except Transient as exc:
            last = exc
            if attempt < policy.max_retries:
                sleep(policy.delay(attempt, exc.retry_after))
    assert last is not None
    if last.final is not None:
        raise last.final
    raise ModelScopeError(f"{what}: giving up after {policy.max_retries + 1} attempts: {last}")


def _retry_after(resp: requests.Response) -> float | None:
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


def body_chunks(resp: requests.Response) -> Iterator[bytes]:
    """The decoded body in pieces of at most CHUNK bytes.

    Bytes are taken from the socket undecoded as they arrive; a gzip or deflate body is inflated here, at most
    CHUNK bytes per step, so a small compressed body cannot expand in memory (callers cap the total). Network
    failures and a corrupt encoding become `Transient`.
    """
    encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
        raise ModelScopeError(f"{resp.url}: unsupported Content-Encoding {encoding!r}")
    inflate = zlib.decompressobj(32 + zlib.MAX_WBITS) if encoding not in ("", "identity") else None
    try:
        # read1: whatever has arrived, at most CHUNK bytes; a full-size read would wait for CHUNK bytes, and a
        # mirror sending a byte now and then would keep it (and the overall deadline check) waiting forever.
        while raw := resp.raw.read1(CHUNK, decode_content=False):
            while raw:
                if inflate is None:
                    piece, raw = raw, b""
                else:
                    piece, raw = inflate.decompress(raw, CHUNK), inflate.unconsumed_tail
                    if inflate.eof and inflate.unused_data:  # a gzip body may hold several members
                        raw, inflate = inflate.unused_data, zlib.decompressobj(32 + zlib.MAX_WBITS)
                if piece:
                    yield piece
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, zlib.error) as exc:
        # Cut off, stalled past the read timeout, or corrupt: the caller decides what survives.
        raise Transient(f"{type(exc).__name__} while reading {resp.url}: {exc}") from exc


def read_capped(resp: requests.Response, limit: int, deadline: float, what: str) -> bytes:
    """The whole (decoded) body of `resp`: at most `limit` bytes, arrived within `deadline` seconds."""
    start = time.monotonic()
    data = bytearray()
    for piece in body_chunks(resp):
        data += piece
        if len(data) > limit:
            raise ModelScopeError(f"{what} at {resp.url} is larger than {limit >> 20} MB; refusing it")
        if time.monotonic() - start > deadline:
            raise ModelScopeError(f"{what} at {resp.url} did not arrive within {deadline:g} s; giving up")
    return bytes(data)


def snippet(resp: requests.Response) -> str:
    try:
        data = next(body_chunks(resp), b"")[:300]
    except (Transient, ModelScopeError):  # only used to decorate an error message
        return ""
    return data.decode("utf-8", "replace").strip()


def get(session: requests.Session, url: str, policy: Policy,
         headers: dict[str, str] | None = None) -> requests.Response:
    """One GET; network failures, 408, 429 and 5xx become ``Transient``."""
    # identity: byte offsets must mean file offsets, and nothing should need inflating (see `body_chunks`).
    headers = {"Accept-Encoding": "identity", **(headers or {})}
    try:
        resp = session.get(url, headers=headers, timeout=policy.timeout, stream=True,
                           allow_redirects=True)
    except requests.RequestException as exc:
        raise Transient(f"{type(exc).__name__} for {url}: {exc}") from exc
    if resp.status_code in (408, 429) or resp.status_code >= 500:
        retry_after = _retry_after(resp)
        resp.close()
        raise Transient(f"HTTP {resp.status_code} for {url}", retry_after=retry_after)
    return resp


@contextlib.contextmanager
def session_for(session: requests.Session | None) -> Iterator[requests.Session]:
    if session is not None:
        yield session
        return
    sess = requests.Session()
    sess.headers["User-Agent"] = USER_AGENT
    try:
        yield sess
    finally:
        sess.close()


