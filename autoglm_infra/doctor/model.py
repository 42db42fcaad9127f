"""The doctor's model checks: files against the host's download plan, index, config. Pure.

Reuses the model stage's stamp logic (`plan_model`): a file whose size, mtime and inode
still match the stamp written when it was verified is trusted; nothing is re-hashed.
`doctor_model_verify: full` adds a row that re-hashes every file on the host with the
model stage's own helper (`--check`, parallel, read-only): bytes that changed under an
unchanged stamp are found only there.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autoglm_infra.common.checks import Check
from autoglm_infra.stages.model.lock import LockError, ModelLock, make_file, make_lock
from autoglm_infra.stages.model.state import PARTIAL, ModelDirState, plan_model

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
PULL_FIX = "run deploys/model.py: it re-fetches missing or changed files and re-verifies them"
# a stamp still matches a file whose bytes changed in place: only a full verify re-reads it
REHASH_FIX = (
    "run deploys/model.py --data model_verify=full: it re-hashes every file and "
    "re-fetches those that differ (with the default stamp mode it would trust them)"
)
CHECK_MARK = "MODEL_CHECK "
_CHECK_EOF = "AUTOGLM_MODEL_FETCH_EOF"


def lock_from_plan(text: str | None) -> ModelLock | None:
    """The files the model stage pinned, from the plan it left on the host."""
    if not text:
        return None
    try:
        doc = json.loads(text)
        files = []
        for f in doc["files"]:
            kind, _, digest = str(f["digest"]).partition(":")
            sha = digest if kind == "sha256" else None
            files.append(make_file(f["path"], f["size"], sha, None if sha else digest))
        return make_lock(
            "huggingface", str(doc["repo"]), str(doc["commit"]), str(doc["commit"]), files
        )
    except (ValueError, KeyError, TypeError, LockError):
        return None


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _few(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")


def model_files_check(state: ModelDirState, lock: ModelLock | None, model_dir: str) -> Check:
    name = "model files"
    if not state.exists:
        return Check(name, "fail", f"{model_dir} does not exist", PULL_FIX)
    if lock is None:
        return Check(
            name,
            "warn",
            f"no download plan in {model_dir}/.autoglm (not pulled by "
            "the model stage): files cannot be checked against a lock",
            PULL_FIX,
        )
    plan = plan_model(lock, state)
    sizes = {f.path: f.size for f in lock.files}
    missing = [p for p in plan.todo if p not in state.files]
    wrong_size = [p for p in plan.todo if p in state.files and state.files[p].size != sizes[p]]
    changed = [p for p in plan.todo if p not in missing and p not in wrong_size]
    problems = []
    if missing:
        problems.append(f"missing: {_few(missing)}")
    if wrong_size:
        problems.append(f"wrong size (incomplete or corrupted): {_few(wrong_size)}")
    if changed:
        problems.append(f"changed since verified (size, mtime or inode): {_few(changed)}")
    if problems:
        return Check(
            name,
            "fail",
            f"{len(plan.todo)} of {len(lock.files)} files of "
            f"{lock.repo}@{lock.commit[:12]}: " + "; ".join(problems),
            PULL_FIX,
        )
    extras = [p for p in plan.extras if not p.endswith(PARTIAL)]
    if extras:
        return Check(
            name,
            "warn",
            f"{len(extras)} files not in the lock: {_few(extras)}",
            "model_prune: true removes them on the next converge",
        )
    return Check(
        name,
        "ok",
        f"{len(plan.verified)} files of {lock.repo}@{lock.commit[:12]} "
        "match their verification stamps (size, mtime, inode; bytes not re-read: "
        "doctor_model_verify: full re-hashes them)",
    )


def model_format_check(state: ModelDirState, texts: Mapping[str, str]) -> Check:
    """config.json readable, weights present, and every file the index names on disk."""
    name = "model format"
    if not state.exists:
        return Check(name, "skip", "no model directory")
    fix = PULL_FIX
    if _json(texts.get("config.json")) is None:
        what = "unreadable JSON" if "config.json" in texts else "missing"
        return Check(name, "fail", f"config.json {what}", fix)
    weights = [p for p in state.files if p.endswith(WEIGHT_SUFFIXES)]
    if not weights:
        return Check(name, "fail", "no *.safetensors or *.bin weight files", fix)
    for index in INDEX_FILES:
        if index not in texts:
            continue
        doc = _json(texts[index])
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict):
            return Check(name, "fail", f"{index} is not JSON with a weight_map (corrupted)", fix)
        absent = sorted({str(v) for v in weight_map.values()} - set(state.files))
        if absent:
            return Check(
                name, "fail", f"{index} names files that are not present: {_few(absent)}", fix
            )
        return Check(
            name,
            "ok",
            f"config.json readable; {index} names "
            f"{len(set(weight_map.values()))} shards, all present",
        )
    return Check(name, "ok", f"config.json readable; {len(weights)} weight files, no index")


def max_positions(config_text: str | None) -> int | None:
    """max_position_embeddings of the model, or of its text model (multimodal configs)."""
    doc = _json(config_text)
    if not isinstance(doc, dict):
        return None
    for section in (doc, doc.get("text_config"), doc.get("llm_config")):
        if isinstance(section, dict) and isinstance(section.get("max_position_embeddings"), int):
            return int(section["max_position_embeddings"])
    return None


ENGINE_NAMES = {"vllm": "vLLM", "sglang": "SGLang"}


def context_length_check(
    config_text: str | None, max_model_len: int, engine: str, *, model_exists: bool
) -> Check:
    name = "context length"
    limit = max_positions(config_text)
    if engine not in ENGINE_NAMES:  # both pass it on: --max-model-len / --context-length
        return Check(name, "skip", f"serve_engine is {engine}: vllm_max_model_len is not used")
    if not model_exists:
        return Check(name, "skip", "no model directory: no config.json to compare with")
    if limit is None:
        return Check(
            name,
            "warn",
            "config.json names no max_position_embeddings",
            "check vllm_max_model_len against the model card",
        )
    if max_model_len > limit:
        return Check(
            name,
            "fail",
            f"vllm_max_model_len is {max_model_len}, above the model's "
            f"max_position_embeddings {limit}: {ENGINE_NAMES[engine]} refuses to start",
            f"set vllm_max_model_len to {limit} or less",
        )
    return Check(
        name, "ok", f"vllm_max_model_len {max_model_len} <= max_position_embeddings {limit}"
    )


def model_access_check(
    unreadable: Sequence[str],
    model_dir: str,
    user: str,
    *,
    model_exists: bool,
    user_exists: bool,
) -> Check:
    """The service user can open every model file and traverse every directory.

    Only vouched for when both were there to try: the directory and the user."""
    name = "model access"
    if not model_exists:
        return Check(name, "skip", f"{model_dir} does not exist: nothing to read")
    if not user_exists:
        return Check(
            name, "skip", f"no user {user} on the host (the service stage creates it): not tried"
        )
    if not unreadable:
        return Check(name, "ok", f"{user} can read every file in {model_dir}")
    return Check(
        name,
        "fail",
        f"{user} cannot read: {_few(list(unreadable))}",
        f"chmod -R a+rX {model_dir} (and a+x on its parent directories); "
        "or give the service user's group read access (chgrp -R GROUP, chmod -R g+rX)",
    )


def contents_script(helper_source: str, plan_file: str) -> str:
    """Run the model stage's helper in `--check` mode, its source on stdin: the doctor
    vouches with the code it ships, not with whatever helper the host holds."""
    plan = shlex.quote(plan_file)
    return "\n".join(
        [
            f"if ! test -f {plan}; then echo {CHECK_MARK}NO_PLAN; exit 0; fi",
            f"command -v python3 >/dev/null || {{ echo {CHECK_MARK}NO_PYTHON; exit 0; }}",
            f"python3 - --plan {plan} --check <<'{_CHECK_EOF}'",
            helper_source.rstrip("\n"),
            _CHECK_EOF,
        ]
    )


@dataclass(frozen=True)
class ModelContents:
    """What the re-hash on the host said. `outcome`: "report" (the lists hold every file of
    the plan), "no_plan", "no_python", or "silent" (no report; `tail` is what it printed)."""

    outcome: str
    ok: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    wrong_size: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unreadable: tuple[str, ...] = ()
    bytes: int = 0
    seconds: float = 0.0
    tail: str = ""


_KINDS = ("ok", "changed", "wrong_size", "missing", "unreadable")


def parse_contents(lines: Sequence[str]) -> ModelContents:
    """The MODEL_CHECK line that `contents_script` prints, parsed."""
    found = next((ln[len(CHECK_MARK) :] for ln in lines if ln.startswith(CHECK_MARK)), None)
    if found in ("NO_PLAN", "NO_PYTHON"):
        return ModelContents(found.lower())
    doc = _json(found)
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in _KINDS):
        return ModelContents("silent", tail=" | ".join(lines[-3:]) if lines else "no output")
    try:
        files = {k: tuple(str(p) for p in doc[k]) for k in _KINDS}
        return ModelContents(
            "report",
            files["ok"],
            files["changed"],
            files["wrong_size"],
            files["missing"],
            files["unreadable"],
            bytes=int(doc.get("bytes", 0)),
            seconds=float(doc.get("seconds", 0)),
        )
    except (TypeError, ValueError):
        return ModelContents("silent", tail=str(found)[:200])


def model_contents_check(found: ModelContents, model_dir: str) -> Check:
    """The row for `doctor_model_verify: full`: what re-hashing every file found."""
    name = "model contents"
    if found.outcome == "no_plan":
        return Check(name, "warn", f"no download plan in {model_dir}/.autoglm: nothing to "
                     "re-hash against (not pulled by the model stage)", PULL_FIX)  # fmt: skip
    if found.outcome == "no_python":
        return Check(name, "fail", "python3 is not installed: the files were not re-hashed",
                     "apt-get install python3-minimal")  # fmt: skip
    if found.outcome != "report":
        return Check(name, "fail", f"the re-hash did not report (printed: {found.tail})",
                     "run again with -vv to see the helper's error")  # fmt: skip
    problems = [
        f"{label}: {_few(list(files))}"
        for files, label in (
            (found.changed, "bytes differ from the lock"),
            (found.wrong_size, "wrong size"),
            (found.missing, "missing"),
            (found.unreadable, "cannot be read"),
        )
        if files
    ]
    total = sum(len(getattr(found, k)) for k in _KINDS)
    if problems:
        return Check(name, "fail", f"re-hashed {total} files: " + "; ".join(problems), REHASH_FIX)
    return Check(
        name,
        "ok",
        f"re-hashed all {total} files ({found.bytes / 1024**3:.2f} GiB) in {found.seconds} s: "
        "every digest matches the lock",
    )
