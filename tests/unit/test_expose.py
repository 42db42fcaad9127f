"""The expose stage's pure core: its keys, certificates, client keys and nginx configuration."""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from autoglm_infra.common.secrets import Secret
from autoglm_infra.config.validate import find_problems, validate_settings
from autoglm_infra.doctor.front import front_check
from autoglm_infra.doctor.host import Listener
from autoglm_infra.stages.expose import front as fr
from autoglm_infra.stages.expose.clients import client_key_path, client_keys, key_map
from autoglm_infra.stages.expose.tls import (
    SERVER_DAYS,
    TlsError,
    days_left,
    ensure_ca,
    issued_pair,
    load_user_pair,
)

NOW = dt.datetime.now(dt.UTC)


def problems_for(**data: Any) -> dict[str, str]:
    return {p.key: p.describe() for p in find_problems(data)}


def user_pair(tmp: Path, days: float = 30, other_key: bool = False) -> tuple[str, str]:
    """A certificate with `days` left and its key file (0600), made by the stage's own CA
    code dated back; `other_key`: the key of another certificate."""
    issued = tmp / "issuer"
    issued_pair(str(issued), "front", ["10.0.0.5"], now=NOW - dt.timedelta(SERVER_DAYS - days))
    if other_key:
        issued_pair(str(issued), "other", ["10.0.0.6"])
    cert = issued / "hosts" / "front.crt"
    return str(cert), str(issued / "hosts" / ("other.key" if other_key else "front.key"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:443", "loopback"),
        ("[::1]:443", "loopback"),
        ("front.example:443", "not a host name"),
        ("10.0.0.5", "ADDRESS:PORT"),
        ("10.0.0.5:0", "ADDRESS:PORT"),
        ("2001:db8::1:443", "brackets"),
    ],
)
def test_exposure_needs_a_non_loopback_address_and_port(value: str, expected: str) -> None:
    problems = problems_for(serve_expose=value)
    assert expected in problems["serve_expose"], problems


def test_valid_exposure_settings_pass() -> None:
    settings = validate_settings(
        {"serve_expose": "[2001:db8::5]:8443", "serve_expose_clients": ["phone-lab", "ci_1"]}
    )
    assert settings.serve_expose == "[2001:db8::5]:8443"


@pytest.mark.parametrize("name", ["Phone", "1phone", "pho ne", "a/b", "x" * 49, ""])
def test_client_names_must_be_identifiers(name: str) -> None:
    problems = problems_for(serve_expose_clients=[name])
    assert "not a valid name" in problems["serve_expose_clients"]


def test_a_duplicate_client_is_refused_by_name() -> None:
    problems = problems_for(serve_expose_clients=["a", "b", "a"])
    assert "a listed more than once" in problems["serve_expose_clients"]


def test_an_exposed_engine_bound_beyond_loopback_is_refused() -> None:
    problems = problems_for(serve_expose="10.0.0.5:443", serve_host="0.0.0.0")
    assert "keep it on 127.0.0.1" in problems["serve_host"]
    assert problems_for(serve_host="0.0.0.0") == {}  # without the front: today's behaviour


def test_the_front_cannot_take_the_engine_port() -> None:
    problems = problems_for(serve_expose="0.0.0.0:8000")
    assert "is the engine's own (serve_port)" in problems["serve_expose"]


def test_cert_and_key_come_together() -> None:
    problems = problems_for(serve_expose="10.0.0.5:443", serve_expose_cert_file="/x.crt")
    assert "together with serve_expose_key_file" in problems["serve_expose_cert_file"]


def test_a_key_that_does_not_match_its_certificate_is_refused(tmp_path: Path) -> None:
    cert, key = user_pair(tmp_path, other_key=True)
    problems = problems_for(
        serve_expose="10.0.0.5:443", serve_expose_cert_file=cert, serve_expose_key_file=key
    )
    assert "is not the key of the certificate" in problems["serve_expose_key_file"]


def test_an_expired_certificate_is_refused(tmp_path: Path) -> None:
    cert, key = user_pair(tmp_path, days=-1)
    problems = problems_for(
        serve_expose="10.0.0.5:443", serve_expose_cert_file=cert, serve_expose_key_file=key
    )
    assert "expired on" in problems["serve_expose_cert_file"]


def test_a_readable_key_file_is_refused(tmp_path: Path) -> None:
    cert, key = user_pair(tmp_path)
    os.chmod(key, 0o644)
    with pytest.raises(TlsError, match="chmod 600") as caught:
        load_user_pair(cert, key)
    assert caught.value.key == "serve_expose_key_file"


def test_a_good_user_pair_loads(tmp_path: Path) -> None:
    cert, key = user_pair(tmp_path)
    pair = load_user_pair(cert, key)
    assert pair.cert_pem == Path(cert).read_bytes()
    assert 29 < days_left(pair.cert_pem) <= 30


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_ca_issues_a_pinned_certificate_and_keeps_its_key(tmp_path: Path) -> None:
    secrets_dir = str(tmp_path / "expose")
    pair = issued_pair(secrets_dir, "gpu-1", ["10.0.0.5", "gpu-1"])
    ca_cert, _ = ensure_ca(secrets_dir)
    leaf = x509.load_pem_x509_certificate(pair.cert_pem)
    leaf.verify_directly_issued_by(ca_cert)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(n.value) for n in sans} == {"10.0.0.5", "gpu-1"}
    assert mode(tmp_path / "expose" / "ca.key") == 0o600
    assert mode(tmp_path / "expose") == 0o700
    # reused while good, so a second converge changes nothing
    assert issued_pair(secrets_dir, "gpu-1", ["10.0.0.5", "gpu-1"]) == pair
    # a new address gets a new certificate from the same CA
    moved = issued_pair(secrets_dir, "gpu-1", ["10.0.0.6", "gpu-1"])
    assert moved.cert_pem != pair.cert_pem
    # and one close to expiry is renewed
    later = issued_pair(secrets_dir, "gpu-1", ["10.0.0.6", "gpu-1"], now=NOW + dt.timedelta(380))
    assert later.cert_pem != moved.cert_pem


def test_a_wildcard_address_is_certified_by_host_name_only(tmp_path: Path) -> None:
    pair = issued_pair(str(tmp_path), "10.1.2.3", ["0.0.0.0", "10.1.2.3"])
    leaf = x509.load_pem_x509_certificate(pair.cert_pem)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in sans] == ["10.1.2.3"]


def test_client_keys_are_made_once_0600_and_mapped(tmp_path: Path) -> None:
    keys = client_keys(str(tmp_path), ["alice", "bob"])
    path = client_key_path(str(tmp_path), "alice")
    assert mode(path) == 0o600 and path.read_text().strip() == keys["alice"].reveal()
    assert client_keys(str(tmp_path), ["alice", "bob"]) == keys
    assert keys["alice"].reveal() != keys["bob"].reveal()
    text = key_map(keys).decode()
    line = next(ln for ln in text.splitlines() if ln.endswith(" alice;"))
    pattern = line.split('"')[1]
    assert pattern.startswith("~^") and not pattern.startswith("~*")  # case-sensitive
    assert re.fullmatch(pattern[1:], f"Bearer {keys['alice'].reveal()}")
    assert not re.fullmatch(pattern[1:], f"Bearer {keys['alice'].reveal().swapcase()}")
    assert not re.fullmatch(pattern[1:], f"Bearer {keys['alice'].reveal()}x")
    assert keys["alice"].reveal() not in repr(keys)
    # deleting a key file rotates that client's key only
    path.unlink()
    rotated = client_keys(str(tmp_path), ["alice", "bob"])
    assert rotated["alice"] != keys["alice"] and rotated["bob"] == keys["bob"]


def test_a_hand_edited_client_key_nginx_cannot_hold_is_refused(tmp_path: Path) -> None:
    path = client_key_path(str(tmp_path), "eve")
    path.parent.mkdir(parents=True)
    path.write_text('abc"def$ghi-0123456789012345\n')
    path.chmod(0o600)
    with pytest.raises(TlsError, match="client eve"):
        client_keys(str(tmp_path), ["eve"])


def test_nginx_conf_allows_only_the_openai_routes_over_modern_tls() -> None:
    settings = validate_settings({"serve_expose": "10.0.0.5:443", "serve_expose_health": True})
    conf = fr.render_nginx_conf(settings).decode()
    assert "listen 10.0.0.5:443 ssl;" in conf
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in conf
    assert "Strict-Transport-Security" in conf
    for route in ("/v1/chat/completions", "/v1/completions", "/v1/models"):
        assert f"location = {route} {{" in conf
        assert f"proxy_pass http://127.0.0.1:8000{route};" in conf
    assert "location = /health" in conf and "location / {\n            return 404;" in conf
    assert "client_max_body_size 64m;" in conf and "rate=60r/m;" in conf
    assert "Retry-After 1 always" in conf
    no_health = fr.render_nginx_conf(validate_settings({"serve_expose": "10.0.0.5:443"}))
    assert b"/health" not in no_health


def test_retry_after_covers_one_request_at_the_rate() -> None:
    assert fr.retry_after(60) == 1
    assert fr.retry_after(1) == 60
    assert fr.retry_after(7) == 9


def test_engine_key_include_refuses_what_nginx_would_interpret() -> None:
    good = fr.engine_auth_content(Secret("abcDEF123", "env X"))
    assert good == b'proxy_set_header Authorization "Bearer abcDEF123";\n'
    for bad in ('a"b', "a$b", "a b", "a;b"):
        with pytest.raises(TlsError, match="service_api_key_env"):
            fr.engine_auth_content(Secret(bad, "env X"))


def test_engine_key_source_follows_the_mode() -> None:
    venv = validate_settings({})
    assert fr.engine_key_source(venv) == ("/etc/autoglm/credentials/api-key", False)


def test_doctor_front_row_warns_on_a_certificate_expiring_within_30_days(tmp_path: Path) -> None:
    listening = [Listener("10.0.0.5", 443)]
    cert, _ = user_pair(tmp_path, days=10)
    text = Path(cert).read_text()
    assert front_check("10.0.0.5:443", text, listening).status == "warn"
    assert front_check("10.0.0.5:443", text, listening, now=NOW + dt.timedelta(11)).status == (
        "fail"
    )
    assert front_check("10.0.0.5:443", text, listening, now=NOW - dt.timedelta(30)).status == "ok"
    assert front_check("10.0.0.5:443", text, [Listener("127.0.0.1", 443)]).status == "fail"
    assert front_check("10.0.0.5:443", "", listening).status == "fail"


def test_metrics_need_the_front_an_allowlist_and_a_port_of_their_own() -> None:
    alone = problems_for(serve_metrics="10.0.0.5:9443", serve_metrics_allow=["10.0.0.9"])
    assert "needs serve_expose" in alone["serve_metrics"]
    open_to_all = problems_for(serve_expose="10.0.0.5:443", serve_metrics="10.0.0.5:9443")
    assert "list the scraper's address" in open_to_all["serve_metrics_allow"]
    same_port = problems_for(
        serve_expose="10.0.0.5:443", serve_metrics="10.0.0.6:443", serve_metrics_allow=["::1"]
    )
    assert "a port of its own" in same_port["serve_metrics"]


def test_the_metrics_listener_allows_its_networks_and_checks_its_token(tmp_path: Path) -> None:
    settings = validate_settings(
        {
            "serve_expose": "10.0.0.5:443",
            "serve_metrics": "10.0.0.5:9443",
            "serve_metrics_allow": ["10.0.0.9", "192.0.2.0/24"],
        }
    )
    conf = fr.render_nginx_conf(settings).decode()
    metrics = conf.split("listen 10.0.0.5:9443 ssl;")[1]
    assert "allow 10.0.0.9;\n        allow 192.0.2.0/24;\n        deny all;" in metrics
    assert metrics.count(f"include {fr.METRICS_AUTH_PATH};") == 2
    assert "proxy_pass http://127.0.0.1:9100/metrics;" in metrics
    token = client_keys(str(tmp_path), ["prometheus"], "scrapers")["prometheus"]
    files = {f.path: f for f in fr.front_files(settings, b"c", b"k", {}, token)}
    assert files[fr.METRICS_AUTH_PATH].mode == "640"
    assert token.reveal().encode() in files[fr.METRICS_AUTH_PATH].content
    assert b"127.0.0.1:9100" in files[fr.NODE_EXPORTER_DEFAULTS].content
    assert fr.packages(settings) == {
        "nginx": fr.NGINX_BINARY,
        "prometheus-node-exporter": fr.NODE_EXPORTER_BINARY,
    }


def test_half_a_ca_or_a_corrupt_pem_is_refused_with_the_fix_and_no_new_ca(tmp_path: Path) -> None:
    secrets_dir = str(tmp_path / "s")
    ensure_ca(secrets_dir)
    ca_crt, ca_key = tmp_path / "s" / "ca.crt", tmp_path / "s" / "ca.key"
    pinned = ca_crt.read_bytes()
    ca_crt.unlink()  # clients pin ca.crt: a lost half is never silently replaced
    with pytest.raises(TlsError) as lost:
        ensure_ca(secrets_dir)
    assert "ca.crt does not" in str(lost.value) and "restore it" in str(lost.value)
    assert not ca_crt.exists()
    ca_crt.write_bytes(pinned)
    ca_key.write_text("not a key\n")
    ca_key.chmod(0o600)
    with pytest.raises(TlsError) as corrupt:
        ensure_ca(secrets_dir)
    assert "holds no readable private key" in str(corrupt.value)


def test_the_key_map_regex_matches_a_hand_made_key_with_dots_and_pluses_only_literally() -> None:
    key = "abc.def+ghi/jkl=mno~pqr-stu_vwx"
    line = key_map({"dora": Secret(key, "test")}).decode().splitlines()[-1]
    pattern = line.split('"')[1][1:]
    assert re.fullmatch(pattern, f"Bearer {key}")
    assert not re.fullmatch(pattern, "Bearer abcXdef+ghi/jkl=mno~pqr-stu_vwx")  # '.' is literal
    assert not re.fullmatch(pattern, "Bearer abc.deffghi/jkl=mno~pqr-stu_vwx")  # so is '+'


def test_a_preview_makes_nothing_on_the_controller(tmp_path: Path) -> None:
    """--dry: the CA, the host certificate and missing client keys exist in memory only."""
    secrets_dir = tmp_path / "s"
    pair = issued_pair(str(secrets_dir), "gpu-1", ["10.1.2.3"], write=False)
    keys = client_keys(str(secrets_dir), ["alice"], write=False)
    assert not secrets_dir.exists()
    assert b"BEGIN CERTIFICATE" in pair.cert_pem and keys["alice"].reveal().startswith("agk-")
    # once made for real, a preview reads them back and still writes nothing
    made = issued_pair(str(secrets_dir), "gpu-1", ["10.1.2.3"])
    made_keys = client_keys(str(secrets_dir), ["alice"])
    before = sorted((p, p.stat().st_mtime_ns) for p in secrets_dir.rglob("*"))
    assert issued_pair(str(secrets_dir), "gpu-1", ["10.1.2.3"], write=False) == made
    assert (
        client_keys(str(secrets_dir), ["alice", "bob"], write=False)["alice"] == made_keys["alice"]
    )
    assert sorted((p, p.stat().st_mtime_ns) for p in secrets_dir.rglob("*")) == before
