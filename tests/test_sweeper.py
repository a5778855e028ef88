"""The bulk worker's sweeper against a real Redis: one sweeps at a time; files expire safely."""

from __future__ import annotations

import os
import time
from pathlib import Path

from batching import keys
from batching.bulk import BatchId
from batching.settings import Settings
from worker.bulk import STALE_UPLOAD_S, Sweeper


def settings(tmp_path: Path, redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, data_dir=tmp_path, sweep_interval_s=1.0)


def test_only_one_sweeper_holds_the_lock(redis_client, redis_url, tmp_path) -> None:
    first = Sweeper(redis_client, settings(tmp_path, redis_url))
    second = Sweeper(redis_client, settings(tmp_path, redis_url))
    assert first.sweep() is True
    assert second.sweep() is False
    assert first.sweep() is True  # the holder renews it
    redis_client.delete(keys.SWEEP_LOCK)
    assert second.sweep() is True


def test_expired_batches_lose_their_files_and_fresh_uploads_keep_theirs(
    redis_client, redis_url, tmp_path
) -> None:
    sweeper = Sweeper(redis_client, settings(tmp_path, redis_url))
    folder = tmp_path / "batches"
    folder.mkdir()
    old = time.time() - STALE_UPLOAD_S - 60
    expired, live, fresh = (BatchId.new("demo") for _ in range(3))
    paths = {b: folder / f"{b}.jsonl" for b in (expired, live, fresh)}
    for path in paths.values():
        path.write_text('{"text": "x"}\n')
    for b in (expired, live):
        os.utime(paths[b], (old, old))
    redis_client.hset(live.key, "status", "completed")
    redis_client.zadd(keys.batches("demo"), {str(expired): 1, str(live): 2})
    abandoned, uploading = folder / "a.part", folder / "b.part"
    abandoned.write_text("{")
    uploading.write_text("{")
    os.utime(abandoned, (old, old))

    sweeper.remove_expired_files()

    assert not paths[expired].exists()
    assert paths[live].exists()
    assert paths[fresh].exists(), "a file stored just before its batch is recorded was deleted"
    assert not abandoned.exists() and uploading.exists()
    assert redis_client.zrange(keys.batches("demo"), 0, -1) == [str(live).encode()]
