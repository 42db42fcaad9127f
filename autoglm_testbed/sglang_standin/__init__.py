"""A CPU stand-in for SGLang 0.5.23, installed into sandbox venvs as the `sglang` package.

The real engine needs an NVIDIA GPU and a 10 GB CUDA 13 venv; the sandbox has neither. The
stand-in (package `sglang` under this folder, see sglang/srt/server.py for what it models
and the files of the real wheel it follows) keeps SGLang's console script `sglang serve`,
the flags the service stage passes, `--config` YAML merging, the start-up log and the HTTP
API (/health gate, Bearer key, /v1/models, /v1/chat/completions), and answers with a
transformers model on CPU.

    wheel = build_wheel(tmp)                       # sglang-0.5.23+standin-py3-none-any.whl
    text = standin_lock(cpu_lock_text, wheel)      # the cpu lock plus that wheel, hash-pinned

The wheel is byte-for-byte reproducible (fixed timestamps, sorted entries), so its hash,
and the lock that pins it, do not change between runs.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent / "sglang"
VERSION = "0.5.23+standin"
WHEEL_NAME = f"sglang-{VERSION}-py3-none-any.whl"
DIST_INFO = f"sglang-{VERSION}.dist-info"
IMPORT_CHECK = "torch transformers sglang"
_EPOCH = (2026, 10, 30, 0, 0, 0)  # SGLang 0.5.23's release day


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def wheel_files() -> dict[str, bytes]:
    """Every file of the wheel: the package sources and its dist-info (no RECORD yet)."""
    files = {
        f"sglang/{path.relative_to(PACKAGE_DIR).as_posix()}": path.read_bytes()
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
    }
    files[f"{DIST_INFO}/METADATA"] = (
        "Metadata-Version: 2.1\nName: sglang\n"
        f"Version: {VERSION}\nSummary: CPU stand-in for SGLang 0.5.23 (autoglm-infra tests)\n"
        "Requires-Python: >=3.11\n"
    ).encode()
    files[f"{DIST_INFO}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: autoglm-testbed\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n"
    )
    files[f"{DIST_INFO}/entry_points.txt"] = b"[console_scripts]\nsglang = sglang.cli.main:main\n"
    return files


def build_wheel(out_dir: Path) -> Path:
    """Write the stand-in wheel into `out_dir` and return its path."""
    files = wheel_files()
    record = [_record_line(name, data) for name, data in files.items()]
    files[f"{DIST_INFO}/RECORD"] = ("\n".join([*record, f"{DIST_INFO}/RECORD,,"]) + "\n").encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / WHEEL_NAME
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, _EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(info, data)
    return path


def standin_lock(cpu_lock: str, wheel: Path) -> str:
    """The cpu lock (torch, transformers) plus the stand-in wheel pinned by its sha256,
    with the import check of the real SGLang profile."""
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    lines = [
        "# import-check: " + IMPORT_CHECK if line.startswith("# import-check:") else line
        for line in cpu_lock.splitlines()
    ]
    header = "# CPU stand-in for profile sglang-0.5.23-cu130 (autoglm_testbed.sglang_standin)"
    return "\n".join([header, *lines, f"sglang=={VERSION} \\", f"    --hash=sha256:{sha}", ""])
