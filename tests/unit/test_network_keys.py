"""Network keys: every mistake is refused by key before anything changes, secrets never shown."""

from __future__ import annotations

from typing import Any

import pytest

from autoglm_infra.config.validate import find_problems, validate_settings


def problems_for(**data: Any) -> dict[str, str]:
    return {p.key: p.describe() for p in find_problems(data)}


def test_defaults_configure_nothing() -> None:
    settings = validate_settings({})
    assert settings.proxy_url is None and settings.apt_mirror_url is None
    assert settings.ca_cert_files == [] and settings.docker_registry_mirrors == []


def test_corporate_proxy_setup_is_valid() -> None:
    settings = validate_settings(
        {
            "proxy_url": "http://proxy.corp.example:3128",
            "proxy_username": "svc-gpu",
            "proxy_password_file": "~/.config/autoglm/proxy-password",
            "no_proxy": ["localhost", "127.0.0.1", ".corp.example", "10.0.0.0/8"],
            "ca_cert_files": ["/etc/autoglm/corp-root-ca.pem"],
        }
    )
    assert settings.proxy_username == "svc-gpu"


def test_china_mirror_setup_is_valid() -> None:
    settings = validate_settings(
        {
            "apt_mirror_url": "https://mirrors.tuna.tsinghua.edu.cn/debian",
            "pip_index_url": "https://pypi.tuna.tsinghua.edu.cn/simple",
            "pip_extra_index_urls": ["https://mirrors.aliyun.com/pypi/simple/"],
            "pip_trusted_hosts": ["mirrors.aliyun.com", "10.1.2.3:8080"],
            "npm_registry": "https://registry.npmmirror.com",
            "docker_registry_mirrors": ["https://docker.m.daocloud.io"],
            "hub_endpoint": "https://hf-mirror.com",
        }
    )
    assert settings.pip_trusted_hosts == ["mirrors.aliyun.com", "10.1.2.3:8080"]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("proxy_url", "socks5://proxy:1080", "scheme 'socks5'"),
        ("proxy_url", "proxy.corp:3128", "not supported"),
        ("apt_mirror_url", "ftp://mirror/debian", "scheme 'ftp'"),
        ("apt_mirror_url", "http://", "no host name"),
        ("pip_extra_index_urls", ["https://ok/simple", "mirror/simple"], "scheme 'none'"),
        ("pip_trusted_hosts", ["https://mirror.example"], "not a URL"),
        ("pip_trusted_hosts", ["mirror.example:99999"], "port must be 1-65535"),
        ("docker_registry_mirrors", ["docker.m.daocloud.io"], "scheme 'none'"),
        ("ca_cert_files", ["corp-ca.pem"], "absolute path"),
        ("proxy_password_file", "secrets/proxy", "absolute path"),
        ("npm_token_file", "token", "absolute path"),
        ("proxy_username", "alice:pw", "without spaces, ':'"),
    ],
)
def test_bad_value_names_key(key: str, value: Any, expected: str) -> None:
    data: dict[str, Any] = {key: value}
    if key in ("proxy_username", "proxy_password_file"):
        data.update(proxy_url="http://proxy:3128", proxy_username="svc")
        data[key] = value
    found = problems_for(**data)
    assert key in found, found
    assert expected in found[key]


@pytest.mark.parametrize("key", ["proxy_url", "pip_index_url", "npm_registry", "apt_mirror_url"])
def test_embedded_login_refused_without_showing_it(key: str) -> None:
    found = problems_for(**{key: "http://alice:s3cret-pw@mirror.example:3128"})
    assert "must not embed user:password" in found[key]
    assert "s3cret-pw" not in found[key] and "alice" not in found[key]


def test_embedded_login_in_a_list_refused_without_showing_it() -> None:
    found = problems_for(pip_extra_index_urls=["https://bob:hunter22@mirror.example/simple"])
    assert "must not embed user:password" in found["pip_extra_index_urls"]
    assert "hunter22" not in found["pip_extra_index_urls"]


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        ({"proxy_username": "svc"}, "proxy_username", "proxy_url is not"),
        (
            {"proxy_url": "http://p:3128", "proxy_password_file": "/root/pw"},
            "proxy_password_file",
            "needs proxy_username",
        ),
        (
            {"apt_security_mirror_url": "http://m/debian-security"},
            "apt_security_mirror_url",
            "apt_mirror_url is not",
        ),
        ({"ca_cert_files": ["/a/ca.pem", "/b/ca.pem"]}, "ca_cert_files", "unique"),
    ],
)
def test_cross_key_mistakes_name_their_key(data: dict[str, Any], key: str, expected: str) -> None:
    found = problems_for(**data)
    assert set(found) == {key}, found
    assert expected in found[key]
