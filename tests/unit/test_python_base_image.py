"""The offline Python base image's package closure and /usr-merged paths."""

from __future__ import annotations

import pytest

from autoglm_testbed.python_base_image import Package, _in_image, closure


def pkg(name: str, depends: str = "", provides: tuple[str, ...] = ()) -> Package:
    return Package(name, "1", depends, provides)


def test_closure_follows_depends_alternatives_and_virtuals() -> None:
    installed = {
        p.name: p
        for p in [
            pkg("python3-pip", ", ca-certificates, python3:any (>= 3.5)"),
            pkg("python3", "python3.11 (>= 3.11), "),
            pkg("python3.11", "media-types | mime-support"),
            pkg("media-types"),
            pkg("ca-certificates", "openssl (>= 1.1.1), debconf (>= 0.5) | debconf-2.0"),
            pkg("openssl"),
            pkg("cdebconf", provides=("debconf-2.0",)),
            pkg("unrelated"),
        ]
    }
    assert closure(["python3-pip"], installed) == [
        "ca-certificates", "cdebconf", "media-types", "openssl", "python3", "python3-pip",
        "python3.11",
    ]  # fmt: skip


def test_closure_names_a_missing_root() -> None:
    with pytest.raises(RuntimeError, match="apt-get install python3-pip"):
        closure(["python3-pip"], {})


def test_paths_are_usr_merged() -> None:
    assert _in_image("/lib/x86_64-linux-gnu/libc.so.6") == "usr/lib/x86_64-linux-gnu/libc.so.6"
    assert _in_image("/bin/sh") == "usr/bin/sh"
    assert _in_image("/usr/bin/python3") == "usr/bin/python3"
    assert _in_image("/etc/python3.11/sitecustomize.py") == "etc/python3.11/sitecustomize.py"
