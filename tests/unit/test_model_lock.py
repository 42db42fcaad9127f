"""Locks: hub answers (Hugging Face, ModelScope) to a pinned lock, files, keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autoglm_infra.config.validate import find_problems
from autoglm_infra.stages.model.lock import (
    LockError,
    download_url,
    lock_file_path,
    lock_from_json,
    lock_to_json,
    parse_hf_revision,
    parse_modelscope_files,
    read_lock,
    revision_url,
    write_lock,
)

COMMIT = "a" * 40
SHA_A = "1" * 64
SHA_B = "2" * 64


def hf_revision(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "zai-org/AutoGLM-Phone-9B",
        "sha": COMMIT,
        "siblings": [
            {"rfilename": "config.json", "size": 812, "blobId": "b" * 40},
            {
                "rfilename": "model-00001-of-00002.safetensors",
                "size": 4_900_000_000,
                "blobId": "c" * 40,
                "lfs": {"size": 4_900_000_000, "sha256": SHA_A, "pointerSize": 135},
            },
            {
                "rfilename": "model-00002-of-00002.safetensors",
                "size": 100,
                "blobId": "d" * 40,
                "lfs": {"size": 1_200_000_000, "oid": SHA_B, "pointerSize": 135},
            },
        ],
    }
    doc.update(overrides)
    return doc


def test_hf_revision_pins_commit_and_prefers_sha256() -> None:
    lock = parse_hf_revision(hf_revision(), "zai-org/AutoGLM-Phone-9B", "main", "https://hf")
    assert lock.commit == COMMIT and lock.revision == "main"
    files = lock.by_path()
    assert files["config.json"].digest == "gitsha1:" + "b" * 40
    assert files["model-00001-of-00002.safetensors"].digest == f"sha256:{SHA_A}"
    # the LFS size wins over a sibling size that could be the pointer's
    assert files["model-00002-of-00002.safetensors"].size == 1_200_000_000
    assert lock.total_size == 812 + 4_900_000_000 + 1_200_000_000


def test_hf_revision_without_blobs_is_refused_with_a_reason() -> None:
    doc = hf_revision(siblings=[{"rfilename": "config.json"}])
    with pytest.raises(LockError, match=r"blobs=true"):
        parse_hf_revision(doc, "o/n", "main")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"sha": "main", "siblings": []}, "40-hex"),
        ({"sha": COMMIT}, "siblings"),
        ({"sha": COMMIT, "siblings": []}, "no files"),
        ({"sha": COMMIT, "siblings": [{"rfilename": "../etc/passwd", "size": 1,
                                       "blobId": "b" * 40}]}, "unsafe"),
        ({"sha": COMMIT, "siblings": [{"rfilename": ".autoglm/plan.json", "size": 1,
                                       "blobId": "b" * 40}]}, "unsafe"),
        ({"sha": COMMIT, "siblings": [{"rfilename": "x", "size": 1,
                                       "lfs": {"size": 1, "sha256": "zz"}}]}, "64 hex"),
        ({"sha": COMMIT, "siblings": [{"rfilename": "x", "size": 1}]}, "neither"),
        ({"sha": COMMIT, "siblings": [{"rfilename": "x", "size": -1,
                                       "blobId": "b" * 40}]}, "non-negative"),
    ],
)  # fmt: skip
def test_bad_hub_answers_are_refused(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(LockError, match=message):
        parse_hf_revision(doc, "o/n", "main")


def test_modelscope_files_skip_directories_and_pin_the_revision() -> None:
    doc = {
        "Code": 200,
        "Data": {
            "Files": [
                {"Path": "sub", "Type": "tree", "Size": 0},
                {"Path": "sub/model.safetensors", "Type": "blob", "Size": 10, "Sha256": SHA_A},
                {"Path": "config.json", "Type": "blob", "Size": 3, "Sha256": SHA_B},
            ]
        },
    }
    lock = parse_modelscope_files(doc, "ZhipuAI/AutoGLM-Phone-9B", "v1.0", "https://ms")
    assert [f.path for f in lock.files] == ["config.json", "sub/model.safetensors"]
    assert lock.commit == "v1.0" and lock.source == "modelscope"
    url = download_url(lock, "https://ms/", "sub/model.safetensors")
    assert url == (
        "https://ms/api/v1/models/ZhipuAI/AutoGLM-Phone-9B/repo?Revision=v1.0"
        "&FilePath=sub%2Fmodel.safetensors"
    )


def test_modelscope_error_code_is_reported() -> None:
    with pytest.raises(LockError, match="said 10010205001: not found"):
        parse_modelscope_files({"Code": 10010205001, "Message": "not found"}, "o/n", "master")


def test_urls_use_the_pinned_commit() -> None:
    lock = parse_hf_revision(hf_revision(), "zai-org/AutoGLM-Phone-9B", "main")
    assert download_url(lock, "https://hf-mirror.com/", "dir/a b.json") == (
        f"https://hf-mirror.com/zai-org/AutoGLM-Phone-9B/resolve/{COMMIT}/dir/a%20b.json"
    )
    assert revision_url("huggingface", "https://hf", "o/n", "refs/pr/1") == (
        "https://hf/api/models/o/n/revision/refs%2Fpr%2F1?blobs=true"
    )


def test_lock_file_round_trip_is_stable(tmp_path: Path) -> None:
    lock = parse_hf_revision(hf_revision(), "zai-org/AutoGLM-Phone-9B", "main", "https://hf")
    path = lock_file_path(tmp_path, "huggingface", lock.repo, "refs/pr/1")
    assert path == tmp_path / "huggingface" / "zai-org--AutoGLM-Phone-9B@refs%2Fpr%2F1.json"
    write_lock(path, lock)
    assert read_lock(path) == lock
    assert lock_to_json(read_lock(path)) == path.read_text()
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind


def test_damaged_lock_file_names_itself() -> None:
    with pytest.raises(LockError, match="mylock: not valid JSON"):
        lock_from_json("{", "mylock")
    with pytest.raises(LockError, match="mylock: not a version-1"):
        lock_from_json('{"lock_version": 9}', "mylock")


def test_model_keys_validate() -> None:
    problems = find_problems({"model_source": "modelscope"})
    assert [p.key for p in problems] == ["hub_endpoint"]
    assert "https://www.modelscope.cn" in problems[0].reason
    assert not find_problems(
        {"model_source": "modelscope", "hub_endpoint": "https://www.modelscope.cn"}
    )
    bad = find_problems(
        {"model_download_workers": 0, "model_verify": "sometimes", "hub_token_env": "1X"}
    )
    assert {p.key for p in bad} == {"model_download_workers", "model_verify", "hub_token_env"}
