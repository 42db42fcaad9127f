"""What the network stage writes, with which mode, and what it removes when keys are unset."""

from __future__ import annotations

import configparser
from typing import Any

import pytest

from autoglm_infra.config.validate import validate_settings
from autoglm_infra.stages.network import files as nw

PEM = b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUe3Q=\n-----END CERTIFICATE-----\n"
SECRET = "p@ss/w0rd!"  # needs percent-encoding in URLs
PASSWORD = "s3cret-pw"
TOKEN = "npm_tok_0123456789"


def plan(secrets: nw.NetworkSecrets | None = None, cas: int = 0, **data: Any) -> nw.NetworkPlan:
    keys = validate_settings(data)
    certs = [nw.ca_cert(f"/ctl/ca{i}.pem", PEM) for i in range(cas)]
    return nw.network_plan(keys, secrets or nw.NetworkSecrets(), certs, "debian", "12")


def files(p: nw.NetworkPlan) -> dict[str, tuple[str, str]]:
    return {f.path: (f.content.decode(), f.mode) for f in p.files}


PROXY = {"proxy_url": "http://proxy.corp:3128", "proxy_username": "svc-gpu"}


def test_nothing_configured_writes_nothing_and_removes_everything() -> None:
    p = plan()
    assert p.files == []
    assert set(p.remove) == set(nw.MANAGED_PATHS)


def test_proxy_with_login_puts_the_password_only_in_root_only_files() -> None:
    p = plan(nw.NetworkSecrets(proxy_password=PASSWORD), **PROXY)
    written = files(p)
    holding = {path for path, (text, _) in written.items() if PASSWORD in text}
    assert holding == {nw.APT_PROXY_AUTH, nw.NETWORK_ENV}
    assert all(written[path][1] == "600" for path in holding)
    assert all(mode == "644" for path, (_, mode) in written.items() if path not in holding)
    assert nw.PIP_CONF not in written and nw.PIP_CONF in p.remove


def test_apt_proxy_conf_and_auth() -> None:
    written = files(plan(nw.NetworkSecrets(proxy_password=PASSWORD), **PROXY))
    conf = written[nw.APT_PROXY][0]
    assert 'Acquire::http::Proxy "http://proxy.corp:3128/";' in conf
    assert 'Acquire::https::Proxy "http://proxy.corp:3128/";' in conf
    assert 'Acquire::http::Proxy::localhost "DIRECT";' in conf
    auth = written[nw.APT_PROXY_AUTH][0]
    # apt only applies a proxy login when the machine names the scheme
    assert "machine http://proxy.corp:3128\nlogin svc-gpu\npassword s3cret-pw\n" in auth


def test_apt_skips_cidrs_and_domains_it_cannot_express() -> None:
    conf = files(plan(proxy_url="http://p:3128", no_proxy=["10.0.0.0/8", ".corp", "mirror"]))
    text = conf[nw.APT_PROXY][0]
    assert "10.0.0.0" not in text and ".corp" not in text and 'Proxy::mirror "DIRECT"' in text


def test_env_file_encodes_the_login_and_the_profile_holds_none() -> None:
    written = files(plan(nw.NetworkSecrets(proxy_password=SECRET), **PROXY))
    env = written[nw.NETWORK_ENV][0]
    assert "https_proxy=http://svc-gpu:p%40ss%2Fw0rd%21@proxy.corp:3128" in env
    assert "NO_PROXY=localhost,127.0.0.1,::1" in env
    profile = written[nw.PROFILE_SNIPPET][0]
    assert "export http_proxy=http://proxy.corp:3128" in profile
    assert "w0rd" not in profile and "svc-gpu" not in profile
    assert f"[ -r {nw.NETWORK_ENV} ]" in profile
    dropin = written[nw.DOCKER_PROXY_DROPIN][0]
    assert f"EnvironmentFile={nw.NETWORK_ENV}" in dropin and "proxy.corp" not in dropin


def test_env_file_parses_as_shell_and_systemd_would() -> None:
    env = files(plan(nw.NetworkSecrets(proxy_password=SECRET), **PROXY))[nw.NETWORK_ENV][0]
    pairs = [line.split("=", 1) for line in env.splitlines() if line and line[0] != "#"]
    assert all(len(p) == 2 and p[0].isidentifier() for p in pairs)
    assert all('"' not in v and "'" not in v and " " not in v for _, v in pairs)


def test_username_without_password_is_refused_naming_the_secret_sources() -> None:
    with pytest.raises(nw.NetworkConfigError, match="AUTOGLM_PROXY_PASSWORD"):
        plan(**PROXY)


def test_password_with_whitespace_refused_for_apt() -> None:
    with pytest.raises(nw.NetworkConfigError, match="whitespace"):
        nw.apt_proxy_auth("http://p:1", "u", "a b")


def test_pip_conf() -> None:
    written = files(
        plan(
            pip_index_url="https://pypi.tuna.tsinghua.edu.cn/simple",
            pip_extra_index_urls=["https://a/simple", "https://b/simple"],
            pip_trusted_hosts=["a", "b:8080"],
            cas=1,
        )
    )
    parser = configparser.RawConfigParser()
    parser.read_string(written[nw.PIP_CONF][0])
    assert parser["global"]["index-url"] == "https://pypi.tuna.tsinghua.edu.cn/simple"
    assert parser["global"]["extra-index-url"].split() == ["https://a/simple", "https://b/simple"]
    assert parser["global"]["trusted-host"].split() == ["a", "b:8080"]
    assert parser["global"]["cert"] == nw.SYSTEM_CA_BUNDLE
    assert "proxy" not in parser["global"]


def test_npm_registry_and_token() -> None:
    p = plan(nw.NetworkSecrets(npm_token=TOKEN), npm_registry="http://10.0.0.1:4873")
    written = files(p)
    assert written[nw.NPMRC] == ("# " + nw.HEADER + "\nregistry=http://10.0.0.1:4873/\n", "644")
    assert written[nw.NPM_AUTH] == (
        f"# {nw.HEADER}\n//10.0.0.1:4873/:_authToken={TOKEN}\n",
        "600",
    )
    assert f"NPM_CONFIG_USERCONFIG={nw.NPM_AUTH}" in written[nw.NETWORK_ENV][0]
    assert TOKEN not in written[nw.NPMRC][0]


def test_npm_token_defaults_to_the_public_registry() -> None:
    assert "//registry.npmjs.org/:_authToken=t" in nw.npm_auth(None, "t")


def test_ca_certificates_installed_by_name_with_a_state_file() -> None:
    p = plan(cas=2)
    written = files(p)
    assert p.ca_names == ["ca0.crt", "ca1.crt"]
    assert written[f"{nw.CA_DIR}/ca0.crt"] == (PEM.decode(), "644")
    assert written[nw.CA_STATE][0] == "ca0.crt\nca1.crt\n"
    assert "REQUESTS_CA_BUNDLE" in written[nw.PROFILE_SNIPPET][0]
    assert "cafile=/etc/ssl/certs/ca-certificates.crt" in written[nw.NPMRC][0]


def test_non_pem_ca_refused_naming_key() -> None:
    with pytest.raises(nw.NetworkConfigError, match=r"ca_cert_files: /ctl/x\.der holds no PEM"):
        nw.ca_cert("/ctl/x.der", b"\x30\x82\x01")


def test_stale_cas_are_only_safe_names() -> None:
    stale = nw.stale_ca_paths(["old.crt", "keep.crt", "../../etc/passwd"], ["keep.crt"])
    assert stale == [f"{nw.CA_DIR}/old.crt"]


def test_distro_source_for_debian_and_ubuntu() -> None:
    debian = nw.distro_source("https://mirrors.tuna.tsinghua.edu.cn/debian/", None, "debian", "12")
    assert (
        "URIs: https://mirrors.tuna.tsinghua.edu.cn/debian\nSuites: bookworm bookworm-updates"
        in debian
    )
    assert (
        "URIs: https://mirrors.tuna.tsinghua.edu.cn/debian-security\nSuites: bookworm-security"
        in debian
    )
    assert "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" in debian
    ubuntu = nw.distro_source("http://mirrors.aliyun.com/ubuntu", None, "ubuntu", "24.04")
    assert "URIs: http://mirrors.aliyun.com/ubuntu\nSuites: noble-security" in ubuntu
    with pytest.raises(nw.NetworkConfigError, match="apt_mirror_url: no archive layout"):
        nw.distro_source("http://m", None, "centos", "9")


def test_source_moves_both_ways() -> None:
    parked = nw.parked_path("/etc/apt/sources.list")
    assert nw.source_moves(True, {"/etc/apt/sources.list": True}) == [
        ("/etc/apt/sources.list", parked)
    ]
    assert nw.source_moves(True, {parked: True}) == []
    assert nw.source_moves(False, {parked: True}) == [(parked, "/etc/apt/sources.list")]
    # the distro recreated its file meanwhile: keep it, do not overwrite it with the old one
    assert nw.source_moves(False, {parked: True, "/etc/apt/sources.list": True}) == []


def test_docker_daemon_settings_for_the_docker_stage() -> None:
    keys = validate_settings({"docker_registry_mirrors": ["https://docker.m.daocloud.io"]})
    assert nw.docker_daemon_settings(keys) == {"registry-mirrors": ["https://docker.m.daocloud.io"]}


def test_secrets_never_show_in_repr() -> None:
    shown = repr(nw.NetworkSecrets(PASSWORD, TOKEN))
    assert PASSWORD not in shown and TOKEN not in shown
