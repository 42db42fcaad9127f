"""Regenerate a hash lock under autoglm_infra/locks/ from its input, with uv.

    python scripts/lock_requirements.py cpu                 # locks/cpu.in -> cpu.txt
    python scripts/lock_requirements.py vllm-cu128          # + vllm-cu128.overrides.txt
    python scripts/lock_requirements.py cpu --find-links /opt/wheels --torch-index-url ''
    python scripts/lock_requirements.py vllm-cu128 --python 3.12   # -> vllm-cu128.py312.txt

Input `<profile>.in` holds the top-level pins plus `# key: value` metadata that is copied
into the lock (python, platform, torch-index, import-check, expected-conflict, and
constraints: another lock in the same folder whose versions every pin must keep); an
optional `<profile>.overrides.txt` is passed to `uv pip compile --override` (how
transformers 5 replaces vLLM 0.12.0's `transformers<5`, see locks/README.md).

uv resolves for one Python minor (the lowest the `python:` line allows, or --python) and
one platform, and writes every file hash of each pinned version (`--generate-hashes`),
wheels only (`--only-binary :all:`, as the stage installs). With --python the lock is the
variant `<profile>.py3XX.txt`, which the stage picks on hosts with that Python minor.
Sources: PyPI (or --index-url), PyTorch's index for locks with `torch-index` (files with a
local label such as +cpu are only there), and --find-links folders. Needs uv:
`.venv/bin/pip install uv` (pip-tools has no --override, so it cannot express the
transformers overlay).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.specifiers import SpecifierSet

from autoglm_infra.common.hash_lock import variant_file

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "autoglm_infra" / "locks"
HEADER_KEYS = (
    "python",
    "platform",
    "torch-index",
    "import-check",
    "expected-conflict",
    "constraints",
)


def read_meta(path: Path) -> dict[str, list[str]]:
    meta: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            field, sep, value = line[1:].strip().partition(":")
            if sep and field.strip() in HEADER_KEYS:
                meta.setdefault(field.strip(), []).append(value.strip())
    return meta


def lowest_python(spec: str) -> str:
    allowed = SpecifierSet(spec)
    for minor in range(8, 20):
        if f"3.{minor}.0" in allowed or f"3.{minor}.99" in allowed:
            return f"3.{minor}"
    raise SystemExit(f"no Python 3.x satisfies python: {spec}")


def uv_binary() -> list[str]:
    beside = Path(sys.executable).with_name("uv")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("uv")
    if found:
        return [found]
    raise SystemExit("uv not found: install it with `.venv/bin/pip install uv`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", help="name of the lock input (locks/<profile>.in)")
    parser.add_argument("--python", help="Python minor to resolve for (default: lowest allowed)")
    parser.add_argument("--index-url", default="https://pypi.org/simple")
    parser.add_argument(
        "--torch-index-url",
        default="https://download.pytorch.org/whl",
        help="base of PyTorch's index ('' to skip it, e.g. with --find-links)",
    )
    parser.add_argument("--find-links", action="append", default=[], help="extra wheel folder")
    parser.add_argument("--locks-dir", type=Path, default=LOCKS)
    args = parser.parse_args(argv)

    source = args.locks_dir / f"{args.profile}.in"
    if not source.is_file():
        known = ", ".join(sorted(p.stem for p in args.locks_dir.glob("*.in")))
        raise SystemExit(f"no lock input {source} (inputs: {known})")
    meta = read_meta(source)
    python = args.python or lowest_python(meta.get("python", [">=3.11"])[0])
    platform = meta.get("platform", ["x86_64-manylinux_2_28"])[0]
    command = [
        *uv_binary(),
        "pip",
        "compile",
        str(source),
        "--generate-hashes",
        "--no-header",
        "--quiet",
        "--python-version",
        python,
        "--python-platform",
        platform,
        "--only-binary",
        ":all:",
        "--index-url",
        args.index_url,
    ]
    torch_index = meta.get("torch-index", [""])[0]
    if torch_index and args.torch_index_url:
        command += ["--extra-index-url", f"{args.torch_index_url.rstrip('/')}/{torch_index}"]
        # torch+cpu exists only on PyTorch's index; take the best match across indexes.
        command += ["--index-strategy", "unsafe-best-match"]
    for folder in args.find_links:
        command += ["--find-links", folder]
    for name in meta.get("constraints", []):
        # pins every dependency at the version of another lock (`uv pip compile -c`)
        command += ["--constraint", str(args.locks_dir / name)]
    overrides = args.locks_dir / f"{args.profile}.overrides.txt"
    if overrides.is_file():
        command += ["--override", str(overrides)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        return result.returncode
    shown = ["uv", *(c.replace(f"{ROOT}/", "") for c in command[len(uv_binary()) :])]
    header = [
        f"# Hash lock of profile {args.profile!r}; do not edit, regenerate with:",
        f"#   python scripts/lock_requirements.py {' '.join(argv or sys.argv[1:])}",
        f"# uv command: {' '.join(shown)}",
        *(f"# {key}: {value}" for key in HEADER_KEYS for value in meta.get(key, [])),
    ]
    if "python" in meta and args.python:
        header = [h for h in header if not h.startswith("# python:")]
        header.append(f"# python: =={python}.*")
    # --python makes the variant for that minor beside the profile's main lock
    name = variant_file(args.profile, python) if args.python else f"{args.profile}.txt"
    target = args.locks_dir / name
    target.write_text("\n".join(header) + "\n" + result.stdout)
    print(f"wrote {target} ({result.stdout.count('==')} pins, Python {python}, {platform})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
