"""The stage's decision from a stat-only listing: stamps, extras, partials, disk."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from autoglm_infra.stages.model.lock import LockedFile, make_lock
from autoglm_infra.stages.model.state import (
    FileStat,
    ModelDirState,
    Stamp,
    disk_problem,
    helper_command,
    listing_script,
    parse_listing,
    plan_model,
    split_lines,
)

SHA = "5" * 64
LOCK = make_lock(
    "huggingface",
    "o/n",
    "main",
    "c" * 40,
    [LockedFile("a.safetensors", 100, sha256=SHA), LockedFile("config.json", 10, git_oid="b" * 40)],
)


def stamped(**stats: FileStat) -> ModelDirState:
    digests = {f.path: f.digest for f in LOCK.files}
    stamps = {p: Stamp(s.size, s.mtime_ns, s.inode, digests[p]) for p, s in stats.items()}
    return ModelDirState(True, dict(stats), stamps)


GOOD = {"a.safetensors": FileStat(100, 1, 11), "config.json": FileStat(10, 2, 12)}


def test_all_stamped_is_a_noop() -> None:
    plan = plan_model(LOCK, stamped(**GOOD))
    assert not plan.run_helper and plan.verified == ("a.safetensors", "config.json")
    assert "2 files verified by stamp" in plan.reason


def test_touched_file_is_rechecked_but_not_counted_as_download() -> None:
    state = stamped(**GOOD)
    state.files["a.safetensors"] = FileStat(100, 999, 11)  # mtime moved
    plan = plan_model(LOCK, state)
    assert plan.run_helper and plan.todo == ("a.safetensors",) and plan.download_bytes == 0


def test_replaced_inode_or_other_digest_is_not_trusted() -> None:
    state = stamped(**GOOD)
    state.files["config.json"] = FileStat(10, 2, 99)
    state.stamps["a.safetensors"] = Stamp(100, 1, 11, "sha256:" + "6" * 64)
    assert plan_model(LOCK, state).todo == ("a.safetensors", "config.json")


def test_partial_counts_as_already_downloaded() -> None:
    state = ModelDirState(True, {"a.safetensors.partial": FileStat(40, 1, 5)}, {})
    plan = plan_model(LOCK, state)
    assert plan.download_bytes == 60 + 10 and plan.extras == ()


def test_extras_reported_and_pruned_only_on_request() -> None:
    state = stamped(**GOOD)
    state.files["old.bin"] = FileStat(5, 1, 13)
    state.files["old.bin.partial"] = FileStat(5, 1, 14)
    plan = plan_model(LOCK, state)
    assert plan.extras == ("old.bin", "old.bin.partial") and not plan.run_helper
    assert plan_model(LOCK, state, prune=True).run_helper


def test_full_verify_always_runs() -> None:
    assert plan_model(LOCK, stamped(**GOOD), verify="full").run_helper


def test_disk_problem_names_numbers_and_key() -> None:
    assert disk_problem(0, 10, 0, "/m") is None
    assert disk_problem(2**30, 2**30, 3 * 2**30, "/m") is None
    message = disk_problem(5 * 2**30, 2**30, 3 * 2**30, "/m")
    assert message is not None
    assert "5.00 GiB to download" in message and "model_disk_margin_mib" in message


def test_listing_script_reads_real_directory(tmp_path: Path) -> None:
    model = tmp_path / "model dir"
    (model / "sub").mkdir(parents=True)
    (model / "a.safetensors").write_bytes(b"x" * 100)
    (model / "sub" / "tab\tname").write_bytes(b"y")
    (model / ".autoglm").mkdir()
    (model / ".autoglm" / "plan.json").write_text("{}")
    st = (model / "a.safetensors").stat()
    stamp = {"size": 100, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino, "digest": f"sha256:{SHA}"}
    stamps = {"files": {"a.safetensors": stamp}}
    (model / ".autoglm" / "stamps.json").write_text(json.dumps(stamps, indent=2))
    out = subprocess.run(
        ["sh", "-c", f"echo other; {listing_script(str(model))}"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    mine, rest = split_lines(out)
    assert rest == ["other"]
    state = parse_listing(mine)
    assert state.exists
    assert state.files["a.safetensors"] == FileStat(100, st.st_mtime_ns, st.st_ino)
    assert "sub/tab\tname" in state.files and ".autoglm/plan.json" not in state.files
    assert state.stamps["a.safetensors"].digest == f"sha256:{SHA}"
    assert plan_model(LOCK, state).todo == ("config.json",)


def test_missing_directory_and_damaged_stamps() -> None:
    assert parse_listing([]) == ModelDirState()
    assert parse_listing(["MD", "MS\t{not json"]).stamps == {}


def test_helper_command_quotes_paths_and_carries_no_secret() -> None:
    command = helper_command("/srv/my models", "full", True)
    assert command == (
        "python3 /usr/local/lib/autoglm/model_fetch.py --plan "
        "'/srv/my models/.autoglm/plan.json' --verify full --prune"
    )
