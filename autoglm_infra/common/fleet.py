"""Fleet runs: what happened to each host, and the batches of a rolling upgrade.

Pure: no pyinfra import. `pyinfra_ext/fleet.py` collects the outcomes of one pyinfra run;
`pyinfra_ext/rollout.py` runs the batches planned here and decides with `should_stop`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from typing import Literal

Status = Literal["converged", "failed", "unreachable", "not converged", "not reached"]
ERROR_WIDTH = 300


@dataclass(frozen=True)
class HostOutcome:
    host: str
    status: Status
    changes: int = 0
    stage: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "converged"

    def describe(self) -> str:
        if self.status == "converged":
            return f"converged with {self.changes} change{'' if self.changes == 1 else 's'}"
        if self.status == "failed":
            return f"failed at stage {self.stage}: {self.error}"
        return f"{self.status}: {self.error}" if self.error else self.status


def one_line(text: str, width: int = ERROR_WIDTH) -> str:
    """An error of any length as one line: lines joined, whitespace collapsed, cut at width."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3] + "..."


def format_summary(outcomes: Sequence[HostOutcome], title: str = "Per-host summary") -> str:
    width = max((len(o.host) for o in outcomes), default=0)
    lines = [f"--> {title}:"]
    lines += [f"    {o.host + ':':<{width + 1}} {o.describe()}" for o in outcomes]
    return "\n".join(lines)


def outcomes_to_json(outcomes: Sequence[HostOutcome]) -> str:
    return json.dumps([asdict(o) for o in outcomes], sort_keys=True)


def outcomes_from_json(text: str) -> list[HostOutcome]:
    return [HostOutcome(**item) for item in json.loads(text)]


class FleetInputError(ValueError):
    """Bad input to a fleet run: the message names the flag or host and the fix."""


@dataclass(frozen=True)
class InventoryEntry:
    group: str
    name: str
    address: str  # ssh_hostname:port, or the name when the data gives none


def duplicate_problems(entries: Iterable[InventoryEntry]) -> list[str]:
    """A host listed twice in one group (pyinfra silently keeps one entry's data), and two
    names for one address (one machine converged twice at once)."""
    problems: list[str] = []
    seen_in_group: set[tuple[str, str]] = set()
    names_by_address: dict[str, str] = {}
    for entry in entries:
        if (entry.group, entry.name) in seen_in_group:
            problems.append(
                f"host {entry.name} is listed twice in group {entry.group}: "
                "keep one entry (pyinfra would silently use only one entry's data)"
            )
        seen_in_group.add((entry.group, entry.name))
        other = names_by_address.setdefault(entry.address, entry.name)
        if other != entry.name:
            problems.append(
                f"hosts {other} and {entry.name} have the same address {entry.address}: "
                "one machine would be converged twice at once; remove one of them"
            )
    return sorted(set(problems), key=problems.index)


def select_hosts(
    hosts: Sequence[str], groups: Mapping[str, Sequence[str]], patterns: Sequence[str]
) -> list[str]:
    """Hosts matching any --limit pattern (a group name or a host name glob, as pyinfra's
    --limit), in inventory order; every hosts when there is no pattern. A pattern that
    matches nothing is an error: pyinfra only warns and then runs against no host."""
    if not patterns:
        return list(hosts)
    chosen: set[str] = set()
    for pattern in patterns:
        matched = set(groups[pattern]) if pattern in groups else set()
        matched |= {h for h in hosts if fnmatch(h, pattern)}
        if not matched:
            raise FleetInputError(
                f"--limit {pattern} matches no host or group of the inventory "
                f"(hosts: {', '.join(hosts)}; groups: {', '.join(sorted(groups))}); "
                "nothing was changed"
            )
        chosen |= matched
    return [h for h in hosts if h in chosen]


def plan_batches(hosts: Sequence[str], batch_size: int) -> list[list[str]]:
    """A canary batch of one host, then batches of `batch_size` in inventory order."""
    if not hosts:
        raise FleetInputError("the inventory selects no host; nothing was changed")
    if len(set(hosts)) != len(hosts):
        twice = sorted({h for h in hosts if hosts.count(h) > 1})
        raise FleetInputError(f"hosts listed twice: {', '.join(twice)}; nothing was changed")
    if batch_size < 1:
        raise FleetInputError(
            f"--batch-size {batch_size}: a batch needs at least 1 host; give 1 to "
            f"{len(hosts)} (the size of the fleet); nothing was changed"
        )
    if batch_size > len(hosts):
        raise FleetInputError(
            f"--batch-size {batch_size} is larger than the fleet ({len(hosts)} host"
            f"{'' if len(hosts) == 1 else 's'}: {', '.join(hosts)}): give 1 to {len(hosts)}; "
            "nothing was changed"
        )
    rest = list(hosts[1:])
    return [[hosts[0]]] + [rest[i : i + batch_size] for i in range(0, len(rest), batch_size)]


def check_max_failures(max_failures: int) -> None:
    if max_failures < 0:
        raise FleetInputError(
            f"--max-failures {max_failures}: give 0 or more (the rollout stops once more "
            "hosts than this failed); nothing was changed"
        )


def should_stop(failed: int, max_failures: int) -> bool:
    """Stop the rollout once more hosts failed than allowed."""
    return failed > max_failures


@dataclass
class Rollout:
    """The state of one rolling upgrade: its batches and what each reached host did."""

    batches: list[list[str]]
    max_failures: int
    outcomes: dict[str, HostOutcome] = field(default_factory=dict)
    stopped: bool = False

    def record(self, results: Iterable[HostOutcome]) -> None:
        for outcome in results:
            self.outcomes[outcome.host] = outcome

    def failed(self) -> list[str]:
        return [h for h, o in self.outcomes.items() if not o.ok]

    def decide(self) -> bool:
        """After a batch: True to go on; False stops the rollout."""
        self.stopped = should_stop(len(self.failed()), self.max_failures)
        return not self.stopped

    def final(self) -> list[HostOutcome]:
        """Every host of the plan, in order; hosts never reached say so."""
        return [
            self.outcomes.get(h) or HostOutcome(h, "not reached", error="left as it was")
            for batch in self.batches
            for h in batch
        ]

    def report(self) -> str:
        final = self.final()
        new = [o.host for o in final if o.ok]
        old = [o.host for o in final if not o.ok]
        verdict = (
            f"rollout stopped: {len(self.failed())} host(s) failed, more than "
            f"--max-failures {self.max_failures}"
            if self.stopped
            else "rollout finished"
        )
        return "\n".join(
            [
                format_summary(final, "Rollout summary"),
                f"    {verdict}",
                f"    on the new state: {', '.join(new) or 'none'}",
                f"    not on the new state: {', '.join(old) or 'none'}",
            ]
        )
