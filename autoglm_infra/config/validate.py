"""Validate merged host data against the schema and explain every problem at once."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from autoglm_infra.config.schema import Settings

_NOT_GIVEN = object()


@dataclass(frozen=True)
class ConfigProblem:
    key: str
    value: Any
    reason: str
    allowed: str

    def describe(self) -> str:
        shown = "(missing)" if self.value is _NOT_GIVEN else repr(redact(self.value))
        return f"{self.key} = {shown}: {self.reason} (allowed: {self.allowed})"


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")


def redact(value: Any) -> Any:
    """Hide any user:password embedded in URLs so error messages never print a secret."""
    if isinstance(value, str):
        return _USERINFO.sub(r"\g<scheme>***@", value)
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    return value


class ConfigError(ValueError):
    """Raised with every problem of one or more hosts; the message is meant for users."""

    def __init__(self, problems_by_host: Mapping[str, list[ConfigProblem]]) -> None:
        self.problems_by_host = dict(problems_by_host)
        super().__init__(format_problems(self.problems_by_host))


def _allowed(key: str) -> str:
    field = Settings.model_fields.get(key)
    extra = field.json_schema_extra if field else None
    return str(extra["allowed"]) if isinstance(extra, dict) else "see README"


def _prefixes() -> set[str]:
    return {name.split("_", 1)[0] + "_" for name in Settings.model_fields}


# Keys that pyinfra or its connectors own even though they share one of our prefixes.
_FOREIGN_KEYS = frozenset({"docker_platform", "docker_architecture"})


def _unknown_keys(data: Mapping[str, Any]) -> list[ConfigProblem]:
    known = set(Settings.model_fields)
    prefixes = _prefixes()
    problems = []
    for key in sorted(data):
        if key in known or key in _FOREIGN_KEYS or not key.startswith(tuple(prefixes)):
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "remove it or fix its name"
        problems.append(ConfigProblem(key, data[key], f"unknown key; {hint}", "a key from README"))
    return problems


def _reason(error: Mapping[str, Any]) -> str:
    message = str(error["msg"])
    # pydantic prefixes custom ValueErrors with "Value error, "; the rest is ours.
    return message.removeprefix("Value error, ")


def _locate(error: Mapping[str, Any]) -> tuple[str, str]:
    """The key an error is about. Cross-key checks (model validators) have no location;
    they raise "KEY: reason" so the message still names the key to fix."""
    reason = _reason(error)
    if error["loc"]:
        return str(error["loc"][0]), reason
    key, sep, rest = reason.partition(": ")
    if sep and key in Settings.model_fields:
        return key, rest
    return "(settings)", reason


def find_problems(data: Mapping[str, Any]) -> list[ConfigProblem]:
    """Every problem in `data` (merged host data), sorted by key; empty when valid."""
    problems = _unknown_keys(data)
    try:
        Settings.model_validate(dict(data))
    except ValidationError as exc:
        seen: set[str] = set()
        for error in exc.errors():
            key, reason = _locate(error)
            if key in seen:
                continue  # one line per key: unions report each branch separately
            seen.add(key)
            value = data.get(key, _NOT_GIVEN)
            problems.append(ConfigProblem(key, value, reason, _allowed(key)))
    return sorted(problems, key=lambda p: p.key)


def validate_settings(data: Mapping[str, Any], host_name: str = "host") -> Settings:
    """Return the typed settings for one host or raise ConfigError listing every problem."""
    problems = find_problems(data)
    if problems:
        raise ConfigError({host_name: problems})
    return Settings.model_validate(dict(data))


def format_problems(problems_by_host: Mapping[str, list[ConfigProblem]]) -> str:
    lines = ["invalid configuration, nothing was changed on any host."]
    for host_name in sorted(problems_by_host):
        problems = problems_by_host[host_name]
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        lines.append(f"  {host_name}: {count}")
        lines.extend(f"    - {p.describe()}" for p in problems)
    lines.append(
        "  Fix the keys in group_data/*.py, the inventory or --data; README 'Configuration' "
        "lists every key."
    )
    return "\n".join(lines)
