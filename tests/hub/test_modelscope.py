"""ModelScope client against the fake mirror: byte equality, no-network second call, every fault."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from glm_ms.hub import http
from glm_ms.hub import modelscope as ms
from glm_ms.hub.modelscope import (
    INCOMPLETE_SUFFIX,
    SNAPSHOT_MANIFEST,
    EntryNotFoundError,
    IntegrityError,
    InvalidModelIdError,
    ModelNotFoundError,
    ModelScopeError,
    RevisionNotFoundError,
    UnsafePathError,
    list_repo_files,
    snapshot_download,
    snapshot_path,
)
from tests.fake_modelscope import LISTING, serve
from tests.support import FAMILY_FOLDERS

pytestmark = pytest.mark.server  # every test here talks to a fake mirror on 127.0.0.1 (or a dead port)

FIXTURE = FAMILY_FOLDERS["chatglm-6b"]
MODEL = "ZhipuAI/ChatGLM-6B"
SHARD = "pytorch_model-00001-of-00003.bin"  # 385852 bytes: served through a 302 redirect
SMALL = "config.json"  # served directly by the /repo endpoint
MALICIOUS = ["../x", "/etc/x", "a/../../x", "a\\..\\x"]


# ------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(autouse=True)
def sleeps(monkeypatch):
    """Record back-off delays instead of sleeping (fast suite, checkable delays)."""
    delays = []
    monkeypatch.setattr(http, "sleep", delays.append)
    monkeypatch.delenv("MODELSCOPE_ENDPOINT", raising=False)
    monkeypatch.delenv("GLM_MS_CACHE", raising=False)
    return delays


@pytest.fixture
def hub():
    with serve({MODEL: FIXTURE}) as server:
        yield server


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def fetch(hub, cache, **kw):
    kw.setdefault("timeout", (2.0, 0.5))
    kw.setdefault("max_retries", 3)
    kw.setdefault("backoff", 0.001)
    kw.setdefault("max_backoff", 0.01)
    kw.setdefault("progress", False)
    return snapshot_download(kw.pop("model_id", MODEL), cache_dir=cache, endpoint=hub.url, **kw)


def tree(root: Path) -> dict:
    """Relative path -> bytes of every file under root."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def source_files(src: Path = FIXTURE, ignore_py: bool = True) -> dict:
    return {k: v for k, v in tree(src).items() if not (ignore_py and k.endswith(".py"))}


def snapshot_files(folder: Path) -> dict:
    """Final files of a snapshot (without the client's manifest and partial files)."""
    return {k: v for k, v in tree(folder).items()
            if k != SNAPSHOT_MANIFEST and not k.endswith(INCOMPLETE_SUFFIX)}


def assert_safe(tmp_path: Path, cache: Path, folder: Path, src: Path = FIXTURE,
                allow_incomplete: bool = False) -> None:
    """Nothing outside the snapshot folder, nothing unverified under a final name."""
    assert not (tmp_path / "x").exists() and not (cache / "x").exists()
    assert not (folder.parent / "x").exists() and not (folder.parent.parent / "x").exists()
    for entry in tmp_path.iterdir():
        assert entry.name in ("cache", "repo", "repo2", "outside"), f"stray {entry}"
    for path in cache.rglob("*"):
        if path.is_file():
            inside = folder in path.parents
            lock = path.name.endswith(".lock") and path.parent == folder.parent
            assert inside or lock, f"file outside the snapshot folder: {path}"
    expected = tree(src)
    for rel, data in tree(folder).items() if folder.exists() else ():
        if rel == SNAPSHOT_MANIFEST:
            continue
        if rel.endswith(INCOMPLETE_SUFFIX):
            assert allow_incomplete, f"unexpected partial file {rel}"
            continue
        assert data == expected[rel], f"unverified bytes under final name {rel}"


def ranges(hub, file: str):
    return [r.header("Range") for r in hub.requests if r.file == file]


@pytest.fixture
def repo(tmp_path):
    """A writable copy of the fixture repository with upstream code and a nested, odd name."""
    dst = tmp_path / "repo"
    shutil.copytree(FIXTURE, dst)
    (dst / "modeling_chatglm.py").write_text("raise SystemExit('upstream code must not run')\n")
    (dst / "sub" / "dir").mkdir(parents=True)
    (dst / "sub" / "dir" / "a b+c%d.txt").write_bytes(b"nested & quoted\n")
    (dst / "empty.txt").write_bytes(b"")
    return dst


# ------------------------------------------------------------------------------------------------
# happy path, caching, patterns, configuration


def test_snapshot_is_byte_identical_and_second_call_makes_no_request(hub, cache, tmp_path):
    folder = fetch(hub, cache)
    assert folder == cache / "modelscope" / "ZhipuAI" / "ChatGLM-6B" / "master"
    assert snapshot_files(folder) == source_files()
    n_files = len(source_files())
    assert hub.count(kind="list") == 1
    assert hub.count(kind="download") == n_files
    big = [k for k, v in source_files().items() if len(v) >= 100_000]
    assert hub.count(kind="file") == len(big) and len(big) >= 3  # redirects were followed
    assert hub.count(kind="download", status=302) == len(big)

    manifest = json.loads((folder / SNAPSHOT_MANIFEST).read_text())
    assert manifest["model_id"] == MODEL and manifest["revision"] == "master"
    assert manifest["endpoint"] == hub.url
    assert {p: r["sha256"] for p, r in manifest["files"].items()} == \
        {p: hashlib.sha256(b).hexdigest() for p, b in source_files().items()}

    hub.clear_requests()
    assert fetch(hub, cache) == folder
    assert hub.requests == []
    assert_safe(tmp_path, cache, folder)


def test_complete_snapshot_needs_no_server_at_all(cache):
    with serve({MODEL: FIXTURE}) as server:
        folder = fetch(server, cache)
    # The server is gone: any request would fail with a connection error.
    assert snapshot_download(MODEL, cache_dir=cache, endpoint="http://127.0.0.1:9",
                             progress=False, max_retries=0) == folder
    assert snapshot_files(folder) == source_files()


def test_touched_file_is_rehashed_and_repaired(hub, cache, tmp_path):
    folder = fetch(hub, cache)
    target = folder / SMALL
    good = target.read_bytes()
    target.write_bytes(good.replace(b"{", b"[", 1))  # same size, different bytes
    hub.clear_requests()
    fetch(hub, cache)
    assert target.read_bytes() == good
    assert hub.count(kind="list") == 1 and hub.count(kind="download") == 1
    # Only mtime changed (same bytes): re-hashed offline, no request.
    os.utime(target, ns=(1, 1))
    hub.clear_requests()
    fetch(hub, cache)
    assert hub.requests == []
    assert_safe(tmp_path, cache, folder)


def test_verified_files_are_not_downloaded_again_without_manifest(hub, cache):
    folder = fetch(hub, cache)
    (folder / SNAPSHOT_MANIFEST).unlink()
    hub.clear_requests()
    fetch(hub, cache)
    assert hub.count(kind="list") == 1 and hub.count(kind="download") == 0
    hub.clear_requests()
    fetch(hub, cache, force=True)
    assert hub.count(kind="list") == 1 and hub.count(kind="download") == 0


def test_python_files_ignored_by_default_and_patterns(repo, cache, tmp_path):
    with serve({"o/n": repo}) as server:
        folder = fetch(server, cache, model_id="o/n")
        files = snapshot_files(folder)
        assert "modeling_chatglm.py" not in files
        assert server.count(file="modeling_chatglm.py") == 0
        assert files == source_files(repo)
        assert files["sub/dir/a b+c%d.txt"] == b"nested & quoted\n" and files["empty.txt"] == b""

        server.clear_requests()
        fetch(server, cache, model_id="o/n", ignore_patterns=None)  # adds the .py file only
        assert server.count(kind="download") == 1
        assert (folder / "modeling_chatglm.py").read_bytes() == (repo / "modeling_chatglm.py"
                                                                ).read_bytes()

    only_json = tmp_path / "cache" / "json"
    with serve({"o/n": repo}) as server:
        folder = fetch(server, only_json, model_id="o/n", allow_patterns=["*.json"])
        assert set(snapshot_files(folder)) == {k for k in source_files(repo) if k.endswith(".json")}
        server.clear_requests()
        fetch(server, only_json, model_id="o/n")  # widen: only the missing files are fetched
        assert server.count(kind="download") == len(source_files(repo)) - len(
            [k for k in source_files(repo) if k.endswith(".json")])
        server.clear_requests()
        fetch(server, only_json, model_id="o/n", allow_patterns="*.json")
        assert server.requests == []


def test_endpoint_and_cache_from_environment(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.url + "/")
    monkeypatch.setenv("GLM_MS_CACHE", str(tmp_path / "cache"))
    folder = snapshot_download(MODEL)  # progress bars on: exercises tqdm too
    assert folder == tmp_path / "cache" / "modelscope" / "ZhipuAI" / "ChatGLM-6B" / "master"
    assert snapshot_files(folder) == source_files()
    assert hub.count(kind="list") == 1
    assert ms.resolve_endpoint() == hub.url
    monkeypatch.delenv("MODELSCOPE_ENDPOINT")
    assert ms.resolve_endpoint() == "https://modelscope.cn"
    assert ms.resolve_endpoint("http://mirror.local:8080/") == "http://mirror.local:8080"
    with pytest.raises(ModelScopeError):
        ms.resolve_endpoint("ftp://mirror")


def test_other_revision_and_listing_api(repo, cache):
    with serve({"o/n": {"master": FIXTURE, "v1.0": repo}}) as server:
        folder = fetch(server, cache, model_id="o/n", revision="v1.0")
        assert folder.name == "v1.0" and snapshot_files(folder) == source_files(repo)
        assert {r.query["Revision"] for r in server.requests if r.kind != "file"} == {"v1.0"}
        listing = list_repo_files("o/n", endpoint=server.url)
        assert [f.path for f in listing] == sorted(source_files(FIXTURE, ignore_py=False))
        assert all(f.sha256 == hashlib.sha256((FIXTURE / f.path).read_bytes()).hexdigest()
                   for f in listing)


@pytest.mark.parametrize("bad", ["noslash", "a/b/c", "../b", "a/..", "/b", "a/", " a/b",
                                 "a\\b/c", ""])
def test_invalid_model_ids_are_rejected_before_any_request(hub, cache, bad):
    with pytest.raises(InvalidModelIdError):
        fetch(hub, cache, model_id=bad)
    assert hub.requests == [] and not cache.exists()


def test_revision_is_sanitised_for_the_filesystem(tmp_path):
    path = snapshot_path(MODEL, "../../etc", tmp_path)
    assert tmp_path / "modelscope" / "ZhipuAI" / "ChatGLM-6B" in path.parents
    assert ".." not in path.parts and path != snapshot_path(MODEL, "etc", tmp_path)


# ------------------------------------------------------------------------------------------------
# resume


@pytest.mark.parametrize("redirect_threshold", [100_000, None])
def test_resume_partial_with_range(cache, tmp_path, redirect_threshold):
    with serve({MODEL: FIXTURE}, redirect_threshold=redirect_threshold) as server:
        folder = snapshot_path(MODEL, cache_dir=cache)
        folder.mkdir(parents=True)
        data = (FIXTURE / SHARD).read_bytes()
        half = len(data) // 2
        (folder / (SHARD + INCOMPLETE_SUFFIX)).write_bytes(data[:half])
        fetch(server, cache, allow_patterns=[SHARD])
        assert f"bytes={half}-" in ranges(server, SHARD)
        assert server.count(file=SHARD, status=206) == 1
        assert server.count(file=SHARD, status=200) == 0
        assert (folder / SHARD).read_bytes() == data
        assert_safe(tmp_path, cache, folder)


def test_complete_incomplete_file_is_renamed_without_request(hub, cache):
    folder = snapshot_path(MODEL, cache_dir=cache)
    folder.mkdir(parents=True)
    (folder / (SHARD + INCOMPLETE_SUFFIX)).write_bytes((FIXTURE / SHARD).read_bytes())
    fetch(hub, cache, allow_patterns=[SHARD])
    assert hub.count(file=SHARD) == 0
    assert (folder / SHARD).read_bytes() == (FIXTURE / SHARD).read_bytes()


def test_oversized_or_wrong_partial_restarts_from_zero(hub, cache, tmp_path):
    folder = snapshot_path(MODEL, cache_dir=cache)
    folder.mkdir(parents=True)
    data = (FIXTURE / SHARD).read_bytes()
    (folder / (SHARD + INCOMPLETE_SUFFIX)).write_bytes(data + b"junk")
    fetch(hub, cache, allow_patterns=[SHARD])
    assert ranges(hub, SHARD) == [None, None]  # /repo then the redirect target, no Range
    assert (folder / SHARD).read_bytes() == data
    # A partial whose bytes are wrong: resumed, caught by Sha256, deleted, fetched again whole.
    (folder / SHARD).unlink()
    (folder / SNAPSHOT_MANIFEST).unlink()
    (folder / (SHARD + INCOMPLETE_SUFFIX)).write_bytes(b"\0" * 1000)
    hub.clear_requests()
    fetch(hub, cache, allow_patterns=[SHARD])
    assert (folder / SHARD).read_bytes() == data
    assert ranges(hub, SHARD)[:2] == ["bytes=1000-", "bytes=1000-"] and ranges(hub, SHARD)[2:] == \
        [None, None]
    assert_safe(tmp_path, cache, folder)


# ------------------------------------------------------------------------------------------------
# faults that must end in a verified recovery


def test_body_cut_off_mid_file_is_resumed(hub, cache, tmp_path):
    size = (FIXTURE / SHARD).stat().st_size
    hub.faults.add(SHARD, "cut", at=size - 1000)
    hub.faults.add(SMALL, "cut")
    folder = fetch(hub, cache)
    assert snapshot_files(folder) == source_files()
    # Every byte that arrived before the cut is kept (bodies are read undecoded, short reads included): the
    # resume starts exactly where the cut was.
    kept = size - 1000
    assert ranges(hub, SHARD) == [None, None, f"bytes={kept}-", f"bytes={kept}-"]
    assert hub.count(file=SHARD, status=206) == 1
    small = (FIXTURE / SMALL).stat().st_size  # cut at half by default: the other half is fetched
    assert ranges(hub, SMALL) == [None, f"bytes={small // 2}-"]
    assert_safe(tmp_path, cache, folder)


def test_range_ignored_restarts_from_zero(hub, cache, tmp_path):
    folder = snapshot_path(MODEL, cache_dir=cache)
    folder.mkdir(parents=True)
    data = (FIXTURE / SHARD).read_bytes()
    (folder / (SHARD + INCOMPLETE_SUFFIX)).write_bytes(data[:1000])
    hub.faults.add(SHARD, "ignore_range")
    fetch(hub, cache)
    assert "bytes=1000-" in ranges(hub, SHARD)
    assert hub.count(file=SHARD, status=206) == 0 and hub.count(kind="file", status=200) >= 1
    assert snapshot_files(folder) == source_files()
    assert_safe(tmp_path, cache, folder)


def test_range_ignored_everywhere(cache, tmp_path):
    with serve({MODEL: FIXTURE}, honour_range=False) as server:
        server.faults.add(SHARD, "cut")
        folder = fetch(server, cache)
        assert snapshot_files(folder) == source_files()
        assert server.count(file=SHARD, status=206) == 0
    assert_safe(tmp_path, cache, folder)


def test_wrong_content_range_restarts_from_zero(hub, cache, tmp_path):
    folder = snapshot_path(MODEL, cache_dir=cache)
    folder.mkdir(parents=True)
    data = (FIXTURE / SHARD).read_bytes()
    (folder / (SHARD + INCOMPLETE_SUFFIX)).write_bytes(data[:1000])
    hub.faults.add(SHARD, "wrong_content_range")
    fetch(hub, cache)
    # Range asked (to /repo, then the target answering a bad 206), then a fresh full request.
    assert ranges(hub, SHARD) == ["bytes=1000-", "bytes=1000-", None, None]
    assert snapshot_files(folder) == source_files()
    assert_safe(tmp_path, cache, folder)


@pytest.mark.parametrize("kind", ["empty_body", "corrupt"])
def test_one_bad_body_is_detected_and_fetched_again(hub, cache, tmp_path, kind):
    hub.faults.add(SHARD, kind)
    hub.faults.add(SMALL, kind)
    folder = fetch(hub, cache)
    assert snapshot_files(folder) == source_files()
    assert hub.count(kind="download", file=SMALL) == 2
    assert hub.count(kind="file", file=SHARD) == 2
    assert_safe(tmp_path, cache, folder)


@pytest.mark.parametrize("code", [500, 503, 429])
def test_server_errors_with_retry_after_then_success(hub, cache, tmp_path, sleeps, code):
    hub.faults.add(LISTING, "status", code=code, retry_after=1, times=2)
    hub.faults.add(SHARD, "status", code=code, retry_after=100, times=2)  # capped
    hub.faults.add(SMALL, "status", code=code, times=1)  # exponential back-off
    folder = fetch(hub, cache, max_backoff=5.0, backoff=0.25)
    assert snapshot_files(folder) == source_files()
    assert hub.count(kind="list") == 3 and hub.count(kind="list", status=code) == 2
    assert hub.count(kind="download", file=SHARD, status=code) == 2
    assert sleeps.count(1.0) == 2 and sleeps.count(5.0) == 2
    assert len(sleeps) == 5 and 0.25 <= min(sleeps) <= 0.25 * 1.1
    assert_safe(tmp_path, cache, folder)


def test_stall_past_read_timeout_is_resumed(hub, cache, tmp_path):
    size = (FIXTURE / SHARD).stat().st_size
    hub.faults.add(SHARD, "stall", seconds=3, at=size - 1000)
    hub.faults.add(LISTING, "stall", seconds=3)
    hub.faults.add(SMALL, "stall", at=0, seconds=3)
    folder = fetch(hub, cache, timeout=(2.0, 0.3))
    assert snapshot_files(folder) == source_files()
    kept = size - 1000  # every byte that arrived before the stall is kept: the resume starts there
    assert ranges(hub, SHARD) == [None, None, f"bytes={kept}-", f"bytes={kept}-"]
    assert hub.count(kind="list") == 2 and hub.count(kind="download", file=SMALL) == 2
    assert_safe(tmp_path, cache, folder)


# ------------------------------------------------------------------------------------------------
# faults that must end in a clear error, leaving nothing unverified


def test_wrong_sha256_in_listing_is_an_integrity_error(hub, cache, tmp_path):
    last = "tokenizer_config.json"  # downloaded last: every other file is already verified
    hub.faults.add(last, "wrong_sha256")
    with pytest.raises(IntegrityError) as err:
        fetch(hub, cache, max_retries=2)
    real = hashlib.sha256((FIXTURE / last).read_bytes()).hexdigest()
    bogus = hashlib.sha256(b"not " + last.encode()).hexdigest()
    assert last in str(err.value) and real in str(err.value) and bogus in str(err.value)
    assert hub.count(kind="download", file=last) == 3
    folder = snapshot_path(MODEL, cache_dir=cache)
    assert not (folder / last).exists() and not (folder / (last + INCOMPLETE_SUFFIX)).exists()
    assert not (folder / SNAPSHOT_MANIFEST).exists()
    assert len(snapshot_files(folder)) == len(source_files()) - 1
    assert_safe(tmp_path, cache, folder)
    # The fault was in one listing only: the next call recovers and keeps the verified files.
    hub.clear_requests()
    fetch(hub, cache)
    assert snapshot_files(folder) == source_files()
    assert hub.count(kind="download") == 1


@pytest.mark.parametrize("delta", [1, -1])
def test_wrong_size_in_listing_is_an_integrity_error(hub, cache, tmp_path, delta):
    hub.faults.add(SHARD, "wrong_size", delta=delta)
    with pytest.raises(IntegrityError) as err:
        fetch(hub, cache, max_retries=1)
    size = (FIXTURE / SHARD).stat().st_size
    assert SHARD in str(err.value) and "size" in str(err.value) and str(size + delta) in \
        str(err.value)
    folder = snapshot_path(MODEL, cache_dir=cache)
    assert not (folder / SHARD).exists() and not (folder / (SHARD + INCOMPLETE_SUFFIX)).exists()
    assert_safe(tmp_path, cache, folder)


def test_persistent_empty_body_is_an_integrity_error(hub, cache, tmp_path):
    hub.faults.add(SMALL, "empty_body", times=None)
    with pytest.raises(IntegrityError, match="config.json"):
        fetch(hub, cache, max_retries=2)
    assert hub.count(kind="download", file=SMALL) == 3
    assert_safe(tmp_path, cache, snapshot_path(MODEL, cache_dir=cache))


def test_file_404_is_a_clear_error(hub, cache, tmp_path):
    hub.faults.add(SMALL, "status", code=404)
    with pytest.raises(EntryNotFoundError) as err:
        fetch(hub, cache)
    assert SMALL in str(err.value) and hub.url in str(err.value) and MODEL in str(err.value)
    assert hub.count(kind="download", file=SMALL) == 1  # not retried
    assert_safe(tmp_path, cache, snapshot_path(MODEL, cache_dir=cache))


def test_unknown_model_is_a_clear_error(hub, cache, tmp_path):
    with pytest.raises(ModelNotFoundError, match="nobody/nothing"):
        fetch(hub, cache, model_id="nobody/nothing")
    hub.faults.add(LISTING, "status", code=404)
    with pytest.raises(ModelNotFoundError, match=MODEL) as err:
        fetch(hub, cache)
    assert hub.url in str(err.value)
    assert hub.count(kind="list") == 2 and hub.count(kind="download") == 0
    assert not snapshot_path(MODEL, cache_dir=cache).exists()


def test_unknown_revision_is_a_clear_error(hub, cache, tmp_path):
    with pytest.raises(RevisionNotFoundError) as err:
        fetch(hub, cache, revision="v9.9")
    assert "v9.9" in str(err.value) and MODEL in str(err.value)
    hub.faults.add(LISTING, "files_null")
    with pytest.raises(RevisionNotFoundError, match="master"):
        fetch(hub, cache)
    assert hub.count(kind="download") == 0
    assert not snapshot_path(MODEL, "v9.9", cache).exists()
    assert not snapshot_path(MODEL, cache_dir=cache).exists()


def test_persistent_server_error_gives_up_with_the_url(hub, cache, sleeps):
    hub.faults.add(SMALL, "status", code=503, times=None)
    with pytest.raises(ModelScopeError) as err:
        fetch(hub, cache, max_retries=2)
    assert type(err.value) is ModelScopeError
    assert "503" in str(err.value) and "FilePath=config.json" in str(err.value)
    assert hub.count(kind="download", file=SMALL) == 3 and len(sleeps) == 2


def test_listing_that_is_not_json_gives_up(hub, cache):
    hub.faults.add(LISTING, "not_json", times=None)
    with pytest.raises(ModelScopeError, match="not JSON"):
        fetch(hub, cache, max_retries=1)
    assert hub.count(kind="list") == 2


def test_persistent_stall_times_out_and_keeps_only_a_partial(hub, cache, tmp_path):
    hub.faults.add(SHARD, "stall", seconds=3, times=None, at=200_000)
    with pytest.raises(ModelScopeError, match="Timeout|timed out|timeout"):
        fetch(hub, cache, allow_patterns=[SHARD], max_retries=1, timeout=(2.0, 0.3))
    folder = snapshot_path(MODEL, cache_dir=cache)
    assert not (folder / SHARD).exists()
    partial = (folder / (SHARD + INCOMPLETE_SUFFIX)).read_bytes()
    assert (FIXTURE / SHARD).read_bytes().startswith(partial) and len(partial) > 0
    assert_safe(tmp_path, cache, folder, allow_incomplete=True)
    hub.faults.clear()  # the documented leftover is resumed by the next call
    hub.clear_requests()
    fetch(hub, cache, allow_patterns=[SHARD])
    assert ranges(hub, SHARD) == [f"bytes={len(partial)}-"] * 2
    assert (folder / SHARD).read_bytes() == (FIXTURE / SHARD).read_bytes()


@pytest.mark.parametrize("paths", [[p] for p in MALICIOUS] + [MALICIOUS, [""], ["a/\0b"],
                                                               ["./x"], ["a//x"]])
def test_malicious_listing_paths_are_refused_before_any_download(hub, cache, tmp_path, paths):
    hub.faults.add(LISTING, "extra_entries", paths=paths)
    with pytest.raises(UnsafePathError):
        fetch(hub, cache, allow_patterns=["*.json"])  # refused even when the pattern skips them
    assert hub.count(kind="download") == 0 and hub.count(kind="file") == 0
    folder = snapshot_path(MODEL, cache_dir=cache)
    assert not folder.exists() or not any(folder.iterdir())
    assert_safe(tmp_path, cache, folder)


def test_symlink_escape_inside_the_cache_is_refused(repo, cache, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = snapshot_path("o/n", cache_dir=cache)
    folder.mkdir(parents=True)
    (folder / "sub").symlink_to(outside, target_is_directory=True)
    with serve({"o/n": repo}) as server:
        with pytest.raises(UnsafePathError, match="outside"):
            fetch(server, cache, model_id="o/n")
        assert server.count(kind="download") == 0
    assert list(outside.iterdir()) == []


def test_unreachable_mirror_gives_up_with_the_url(cache, sleeps):
    with serve({MODEL: FIXTURE}) as server:
        dead = server.url  # closed once the context exits
    with pytest.raises(ModelScopeError, match="ConnectionError") as err:
        snapshot_download(MODEL, cache_dir=cache, endpoint=dead, progress=False, max_retries=2,
                          backoff=0.001)
    assert f"{dead}/api/v1/models/ZhipuAI/ChatGLM-6B/repo/files" in str(err.value)
    assert len(sleeps) == 2


def test_concurrent_calls_download_each_file_once(hub, cache):
    results, errors = [], []

    def worker():
        try:
            results.append(fetch(hub, cache))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == [] and len(set(results)) == 1
    assert snapshot_files(results[0]) == source_files()
    assert hub.count(kind="list") == 1 and hub.count(kind="download") == len(source_files())


# ------------------------------------------------------------------------------------------------
# hostile listings: bounded time, bounded memory, a clear error


def _peak_bytes(fn):
    import tracemalloc
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("kind", ["endless", "gzip_bomb"])
def test_oversized_listing_ends_fast_with_a_clear_error(hub, cache, kind):
    import time

    hub.faults.add(LISTING, kind, times=None)
    start = time.monotonic()

    def fetch_it():
        with pytest.raises(ModelScopeError, match=r"listing at .* is larger than 32 MB; refusing it"):
            fetch(hub, cache)
    peak = _peak_bytes(fetch_it)
    assert time.monotonic() - start < 30  # a generous hang bound: the old client never returned
    assert peak < 3 * ms.MAX_LISTING_BYTES  # not the 256 MB the bomb inflates to
    assert hub.count(kind="list") == 1  # refused, not retried
    assert hub.count(kind="download") == 0


def test_listing_that_trickles_forever_hits_the_overall_deadline(hub, cache):
    import time

    hub.faults.add(LISTING, "trickle", times=None, interval=0.05)
    start = time.monotonic()
    with pytest.raises(ModelScopeError, match=r"did not arrive within 1 s"):
        fetch(hub, cache, listing_timeout=1.0)  # each byte comes well within the 0.5 s read timeout
    assert time.monotonic() - start < 15
    assert hub.count(kind="download") == 0


def test_identity_is_asked_for_the_listing_and_downloads(hub, cache):
    fetch(hub, cache)
    assert {r.header("Accept-Encoding") for r in hub.requests} == {"identity"}


def test_a_gzip_listing_within_bounds_is_read(hub, cache):
    hub.faults.add(LISTING, "gzip")
    folder = fetch(hub, cache)
    assert snapshot_files(folder) == source_files()
    assert hub.count(kind="list") == 1


@pytest.mark.parametrize("paths", [["a", "a/b"], ["x/y", "x/y/z"]])
def test_listing_with_a_path_both_file_and_folder_is_refused(hub, cache, tmp_path, paths):
    hub.faults.add(LISTING, "extra_entries", paths=paths)
    with pytest.raises(UnsafePathError, match=rf"{paths[0]!r} both as a file and as a folder"):
        fetch(hub, cache)
    assert hub.count(kind="download") == 0


def test_a_planted_partial_symlink_is_not_written_through(hub, cache, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = snapshot_path(MODEL, cache_dir=cache)
    folder.mkdir(parents=True)
    (folder / (SMALL + INCOMPLETE_SUFFIX)).symlink_to(outside / "victim")
    with pytest.raises(UnsafePathError, match="outside"):
        fetch(hub, cache, allow_patterns=[SMALL])
    assert list(outside.iterdir()) == []
