"""Render a stage's Jinja template (pure): strict about missing values, no HTML escaping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2


def render(folder: Path, name: str, **values: Any) -> str:
    """`folder/name` rendered; block tags leave no blank lines (trim and lstrip blocks)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    return env.get_template(name).render(**values)
