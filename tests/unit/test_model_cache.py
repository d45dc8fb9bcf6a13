"""The agent's content-addressed model store: verification, idempotence, byte cap, eviction."""

from __future__ import annotations

import hashlib

import pytest

from device_agent.cache import ModelCache
from device_agent.errors import AgentInvalidRequestError, LimitExceededError, NotFoundError


def fake_model(size: int, tag: int = 0) -> bytes:
    """Bytes with a TFLite header (root offset + "TFL3"): enough for the store's checks."""
    return b"\x1c\x00\x00\x00TFL3" + bytes([tag % 256]) * (size - 8)


def put(cache: ModelCache, data: bytes, chunk_bytes: int = 1000) -> tuple[int, bool]:
    chunks = [data[i: i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]
    return cache.put(hashlib.sha256(data).hexdigest(), len(data), chunks)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_put_stores_by_digest_and_is_idempotent(tmp_path):
    cache = ModelCache(tmp_path, 10_000)
    model = fake_model(3000)
    assert put(cache, model) == (3000, False)
    assert put(cache, model) == (3000, True)
    assert cache.path(sha(model)).read_bytes() == model
    assert cache.used_bytes == 3000


@pytest.mark.parametrize("case, data, claimed_sha, total, message", [
    ("truncated", fake_model(2000)[:1500], sha(fake_model(2000)), 2000, "truncated: received 1500 of 2000"),
    ("too long", fake_model(2000), sha(fake_model(2000)), 1500, "more than the announced"),
    ("digest", fake_model(2000), sha(b"x"), 2000, "sha256 mismatch"),
    ("not tflite", b"\x00" * 2000, sha(b"\x00" * 2000), 2000, "not a TFLite model"),
    ("bad digest", fake_model(2000), "ABC", 2000, "64 lowercase hex"),
])
def test_bad_uploads_are_refused_and_leave_nothing(tmp_path, case, data, claimed_sha, total, message):
    cache = ModelCache(tmp_path, 10_000)
    with pytest.raises(AgentInvalidRequestError, match=message):
        cache.put(claimed_sha, total, [data])
    assert list(tmp_path.iterdir()) == [] and cache.used_bytes == 0


def test_unknown_digest_is_not_found(tmp_path):
    with pytest.raises(NotFoundError, match="upload it with PutModel"):
        ModelCache(tmp_path, 1000).path("0" * 64)


def test_evicts_least_recently_used_unpinned_models(tmp_path):
    cache = ModelCache(tmp_path, 10_000)
    a, b, c, d = (fake_model(3000, tag) for tag in range(4))
    for model in (a, b, c):
        put(cache, model)
    cache.pin(sha(a))          # a is loaded: never evicted
    cache.path(sha(b))         # b used more recently than c
    put(cache, d)              # needs 3000 more: c (oldest unpinned) goes
    assert sha(c) not in cache
    assert all(s in cache for s in (sha(a), sha(b), sha(d)))
    assert cache.used_bytes == 9000


def test_full_of_pinned_models_is_resource_exhausted(tmp_path):
    cache = ModelCache(tmp_path, 7000)
    a, b, c = (fake_model(3000, tag) for tag in range(3))
    put(cache, a)
    put(cache, b)
    cache.pin(sha(a))
    cache.pin(sha(b))
    with pytest.raises(LimitExceededError, match="held by loaded models"):
        put(cache, c)
    cache.unpin(sha(b))
    put(cache, c)  # b is unloaded now, so it can make room
    assert sha(b) not in cache and sha(c) in cache


def test_model_larger_than_the_cache(tmp_path):
    with pytest.raises(LimitExceededError, match="--cache-max-bytes"):
        put(ModelCache(tmp_path, 1000), fake_model(2000))


def test_reopening_finds_stored_models_and_drops_partial_uploads(tmp_path):
    model = fake_model(2000)
    put(ModelCache(tmp_path, 10_000), model)
    (tmp_path / ".upload-123").write_bytes(b"partial")
    reopened = ModelCache(tmp_path, 10_000)
    assert sha(model) in reopened and reopened.used_bytes == 2000
    assert not (tmp_path / ".upload-123").exists()


# -- trust by contents, not by name (issue 23) -----------------------------------------------------
def test_a_planted_file_under_a_digest_is_not_served(tmp_path):
    """A file named after one digest but holding other bytes is deleted at first use: NOT_FOUND, re-upload."""
    model, other = fake_model(2000, 1), fake_model(2000, 2)
    (tmp_path / f"{sha(model)}.tflite").write_bytes(other)
    cache = ModelCache(tmp_path, 10_000)
    with pytest.raises(NotFoundError, match="stored corrupt .* upload it again"):
        cache.pin(sha(model))
    assert not (tmp_path / f"{sha(model)}.tflite").exists() and cache.used_bytes == 0
    assert put(cache, model) == (2000, False)
    assert cache.pin(sha(model)).read_bytes() == model


def test_a_truncated_entry_is_replaced_by_the_next_upload(tmp_path):
    """Uploading a model whose stored copy is truncated writes it again instead of answering 'already present'."""
    model = fake_model(3000)
    cache = ModelCache(tmp_path, 10_000)
    put(cache, model)
    path = cache.path(sha(model))
    path.write_bytes(model[:1000])  # a crash or a full disk left part of it
    assert put(cache, model) == (3000, False)
    assert cache.path(sha(model)).read_bytes() == model
    assert put(cache, model) == (3000, True)


def test_an_entry_changed_after_verification_is_hashed_again(tmp_path):
    model = fake_model(2000)
    cache = ModelCache(tmp_path, 10_000)
    put(cache, model)
    cache.pin(sha(model))
    cache.unpin(sha(model))
    (tmp_path / f"{sha(model)}.tflite").write_bytes(fake_model(2000, 9))
    with pytest.raises(NotFoundError, match="stored corrupt"):
        cache.path(sha(model))


def test_the_store_is_private_and_uploads_are_flushed_before_the_rename(tmp_path, monkeypatch):
    import os

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    cache = ModelCache(tmp_path / "store", 10_000)
    assert (tmp_path / "store").stat().st_mode & 0o777 == 0o700
    put(cache, fake_model(2000))
    assert len(synced) >= 2  # the file, then its directory


def test_default_cache_dir_is_private_when_home_is_read_only(tmp_path, monkeypatch):
    import os
    import tempfile

    from device_agent import cache as cache_module

    monkeypatch.setenv("XDG_CACHE_HOME", "/proc/no-such-dir")  # cannot be created
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path = cache_module.default_cache_dir()
    assert path == str(tmp_path / f"dflare-agent-cache-{os.getuid()}")
    assert os.stat(path).st_mode & 0o777 == 0o700
    os.chmod(path, 0o777)  # someone opened it up: not trusted, a fresh private one instead
    other = cache_module.default_cache_dir()
    assert other != path and os.stat(other).st_mode & 0o777 == 0o700
