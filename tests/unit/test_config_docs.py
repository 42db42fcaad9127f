"""README's variable table and group_data/all.py are generated from the schema."""

from __future__ import annotations

import runpy

from autoglm_infra.config import docs
from autoglm_infra.config.schema import schema_fields
from autoglm_infra.config.validate import find_problems


def test_generated_files_match_schema() -> None:
    assert docs.drift() == [], "run: python -m autoglm_infra.config.docs --write"


def test_drift_is_detected(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    readme = tmp_path / "README.md"
    readme.write_text(docs.README.read_text().replace("`serve_port`", "`serve_prt`"))
    monkeypatch.setattr(docs, "README", readme)
    monkeypatch.setattr(docs, "ROOT", tmp_path)
    monkeypatch.setattr(docs, "GROUP_DATA_ALL", tmp_path / "all.py")
    assert docs.drift() == ["README.md", "all.py"]


def test_group_data_all_defines_every_key_with_its_default() -> None:
    namespace = runpy.run_path(str(docs.GROUP_DATA_ALL))
    for key, default, _, _ in schema_fields():
        assert namespace[key] == default
    values = {k: v for k, v in namespace.items() if not k.startswith("_")}
    assert find_problems(values) == []
