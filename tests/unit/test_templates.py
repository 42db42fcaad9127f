"""common/templates.py: strict rendering, one compiled template per process, edits seen."""

from __future__ import annotations

import os
from pathlib import Path

import jinja2
import pytest

from autoglm_infra.common.templates import render


def test_render_is_strict_keeps_newlines_and_trims_blocks(tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text("{% if on %}\nx={{ value }}\n{% endif %}\n")
    assert render(tmp_path, "t.j2", on=True, value="<1>") == "x=<1>\n"
    with pytest.raises(jinja2.UndefinedError):
        render(tmp_path, "t.j2", on=True)


def test_a_template_is_compiled_once_and_again_after_an_edit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = tmp_path / "unit.j2"
    template.write_text("a={{ a }}\n")
    compiled: list[str] = []
    original = jinja2.Environment.compile

    def counting(self: jinja2.Environment, source: str, *args: object, **kwargs: object) -> object:
        compiled.append(source)
        return original(self, source, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jinja2.Environment, "compile", counting)
    assert [render(tmp_path, "unit.j2", a=n) for n in (1, 2, 3)] == ["a=1\n", "a=2\n", "a=3\n"]
    assert len(compiled) == 1  # one compile for three hosts
    template.write_text("b={{ a }}\n")
    stat = template.stat()
    os.utime(template, (stat.st_atime, stat.st_mtime + 10))
    assert render(tmp_path, "unit.j2", a=4) == "b=4\n"
