"""The controller's cache forgets entries nobody used for a long time, and nothing else."""

from __future__ import annotations

import os
import time
from pathlib import Path

from autoglm_infra.common.controller_cache import prune_unused, write_private


def test_only_entries_unused_for_longer_than_the_age_are_removed(tmp_path: Path) -> None:
    now = time.time()
    old, fresh, subdir = tmp_path / "old.json", tmp_path / "fresh.json", tmp_path / "sub"
    write_private(old, b"{}")
    write_private(fresh, b"{}")
    subdir.mkdir()
    os.utime(old, (now - 31 * 86400, now - 31 * 86400))
    os.utime(fresh, (now - 29 * 86400, now - 29 * 86400))
    assert prune_unused(tmp_path, 30 * 86400, now=now) == [old]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.json", "sub"]


def test_a_missing_directory_is_no_error(tmp_path: Path) -> None:
    assert prune_unused(tmp_path / "never-made", 1) == []
