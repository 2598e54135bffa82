"""File primitives: atomic writes leave no partial file, sha256, confinement through symlinks, same-file, lock."""
import hashlib
import json
import os
import threading
import time

import pytest

from glm_ms import files


def test_atomic_writes_and_copies(tmp_path):
    target = tmp_path / "a.json"
    files.atomic_write_json(target, {"b": [1, 2], "名": "值"})
    assert json.loads(target.read_text(encoding="utf-8")) == {"b": [1, 2], "名": "值"}
    files.atomic_write_bytes(target, b"replaced")
    assert target.read_bytes() == b"replaced"
    files.atomic_copy(target, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == b"replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "copy"]  # no .incomplete left behind


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a"
    target.write_bytes(b"old")

    def fail(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space"):
        files.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"


def test_sha256_and_partial_hashes(tmp_path):
    data = os.urandom(3 * (1 << 22) + 5)  # more than one read chunk
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert files.sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert files.update_hash(hashlib.sha256(), path, limit=1000).hexdigest() == hashlib.sha256(data[:1000]).hexdigest()
    assert files.file_matches(path, len(data), hashlib.sha256(data).hexdigest())
    assert files.file_matches(path, len(data), None)
    assert not files.file_matches(path, len(data) - 1, None)
    assert not files.file_matches(path, len(data), "0" * 64)
    assert not files.file_matches(tmp_path / "absent", 0, None)


def test_within_resolves_symlinks_and_dots(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f").write_text("x")
    (root / "inside").symlink_to(root / "sub" / "f")
    (root / "outside").symlink_to(tmp_path / "secret")
    assert files.within(root, root / "sub" / "f") and files.within(root, root / "inside")
    assert files.within(root, root / "not-yet-there")
    assert not files.within(root, root / "outside")
    assert not files.within(root, root / ".." / "secret")
    assert not files.within(root, root)


def test_same_file_sees_through_spellings(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
    assert files.same_file(tmp_path / "link" / "m", tmp_path / "m")
    assert files.same_file(tmp_path / "m" / ".." / "m", tmp_path / "m")
    assert not files.same_file(tmp_path / "m", tmp_path)
    assert not files.same_file(tmp_path / "absent", tmp_path / "m")


def test_file_lock_serialises_holders(tmp_path):
    lock = tmp_path / "sub" / ".lock"
    events = []

    def hold(name):
        with files.file_lock(lock):
            events.append(f"{name} in")
            time.sleep(0.2)
            events.append(f"{name} out")
    threads = [threading.Thread(target=hold, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert events in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])
