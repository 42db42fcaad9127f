"""A file a stage owns on the host: exact content and mode, written only when they differ."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ManagedFile:
    path: str
    content: bytes
    mode: str = "644"
    group: str = "root"  # the owner is root; a service's group may read a 0640 file
