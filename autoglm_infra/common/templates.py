"""Render a stage's Jinja template (pure): strict about missing values, no HTML escaping."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jinja2


def render(folder: Path, name: str, **values: Any) -> str:
    """`folder/name` rendered; block tags leave no blank lines (trim and lstrip blocks)."""
    return _environment(folder).get_template(name).render(**values)


@functools.cache
def _environment(folder: Path) -> jinja2.Environment:
    """One environment per template folder, so each template is compiled once per process
    and not once per host (jinja2 recompiles a template whose file changed)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
