"""Modules loaded on first use: not before, and the stages keep X.509 out of a converge."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autoglm_infra.common.lazy_import import lazy_module

ROOT = Path(__file__).resolve().parents[2]


def test_a_lazy_module_runs_on_its_first_attribute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "autoglm_lazy_probe.py").write_text(
        "import builtins\nbuiltins.PROBE_RAN = 1\nX = 5\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "autoglm_lazy_probe", raising=False)
    import builtins

    module = lazy_module("autoglm_lazy_probe")
    try:
        assert not hasattr(builtins, "PROBE_RAN")
        assert module.X == 5 and builtins.PROBE_RAN == 1  # type: ignore[attr-defined]
        assert lazy_module("autoglm_lazy_probe") is sys.modules["autoglm_lazy_probe"]
    finally:
        monkeypatch.delattr(builtins, "PROBE_RAN", raising=False)
        sys.modules.pop("autoglm_lazy_probe", None)


def test_a_missing_module_is_an_import_error_at_once() -> None:
    with pytest.raises(ImportError, match="no_such_module_here"):
        lazy_module("no_such_module_here")


def test_importing_every_stage_leaves_x509_unloaded() -> None:
    probe = (
        "import sys, autoglm_infra.stages.deploy\n"
        "assert 'cryptography.x509.base' not in sys.modules, 'x509 was loaded'\n"
        "from autoglm_infra.stages.expose.tls import subject_names\n"
        "assert subject_names(['a.example'])[0].value == 'a.example'\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
