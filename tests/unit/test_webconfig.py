"""The web config file (exporter-toolkit's format): what loads, and the one-line error of what does
not. Real files, a real certificate from `openssl`, real bcrypt hashes."""

from __future__ import annotations

import base64
import ssl
import subprocess
from pathlib import Path

import bcrypt
import pytest

from ckptwatch.daemon.webconfig import WebSettings, load_web_config
from ckptwatch.errors import UsageError
from tests.tools import require_tool


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    home = tmp_path_factory.mktemp("cert")
    openssl = require_tool("openssl", "Debian package `openssl`")
    crt, key = home / "tls.crt", home / "tls.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
         "-days", "1", "-subj", "/CN=localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return crt, key


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return str(path)


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(UsageError) as e:
        load_web_config(write(tmp_path, text))
    message = str(e.value)
    assert "\n" not in message
    return message


def tls(cert, extra: str = "") -> str:
    crt, key = cert
    return f"tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n{extra}"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_tls_with_relative_paths_and_the_default_minimum_version(tmp_path, cert):
    crt, key = cert
    (tmp_path / "c.pem").write_bytes(crt.read_bytes())
    (tmp_path / "k.pem").write_bytes(key.read_bytes())
    web = load_web_config(write(tmp_path, "tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n"))
    assert web.tls and web.context is not None
    assert web.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert web.context.verify_mode == ssl.CERT_NONE
    assert str(tmp_path / "c.pem") in web.files and str(tmp_path / "k.pem") in web.files
    assert load_web_config(write(tmp_path, tls(cert, "  min_version: TLS13\n"))).context.minimum_version == (
        ssl.TLSVersion.TLSv1_3
    )


def test_an_empty_file_is_plain_http_without_auth(tmp_path):
    web = load_web_config(write(tmp_path, ""))
    assert not web.tls and web.users == {} and web.headers == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "tls_server_config:\n  cert_file: /nope.crt\n  key_file: /nope.key\n",
            "tls_server_config.cert_file: /nope.crt: no such file",
        ),
        ("tls_server_config: {}\n", "tls_server_config.cert_file: required for TLS"),
        ("tls_config: {}\n", "tls_config: unknown key"),
        ("basic_auth_users:\n  alice: secret\n", "basic_auth_users.alice: must be a bcrypt hash"),
        ("basic_auth_users: [alice]\n", "basic_auth_users: must be a mapping"),
        (
            "http_server_config:\n  headers:\n    Server: apache\n",
            "http_server_config.headers.Server: set by the server itself",
        ),
        ("http_server_config:\n  http3: true\n", "http_server_config.http3: unknown key"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_errors_name_the_key(tmp_path, text, expected):
    assert expected in error(tmp_path, text)


def test_tls_errors_name_the_key(tmp_path, cert):
    crt, _ = cert
    assert "min_version: 'TLS14'" in error(tmp_path, tls(cert, "  min_version: TLS14\n"))
    assert "client_auth_type" in error(tmp_path, tls(cert, "  client_auth_type: RequireAnyClientCert\n"))
    assert "needs client_ca_file" in error(tmp_path, tls(cert, "  client_auth_type: RequireAndVerifyClientCert\n"))
    assert "set client_auth_type too" in error(tmp_path, tls(cert, f"  client_ca_file: {crt}\n"))
    mutual = load_web_config(
        write(tmp_path, tls(cert, f"  client_ca_file: {crt}\n  client_auth_type: RequireAndVerifyClientCert\n"))
    )
    assert mutual.context.verify_mode == ssl.CERT_REQUIRED
    crt_only = f"tls_server_config:\n  cert_file: {crt}\n  key_file: {crt}\n"  # not a key
    assert "cannot load cert_file/key_file" in error(tmp_path, crt_only)


def test_go_only_keys_are_accepted_and_ignored(tmp_path, cert):
    web = load_web_config(write(tmp_path, tls(cert, "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n")))
    assert web.tls


def test_basic_auth_checks_bcrypt_once_then_answers_from_the_cache(tmp_path):
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(4)).decode()
    htpasswd_style = "$2y$" + hashed[4:]
    settings = WebSettings(write(tmp_path, f"basic_auth_users:\n  alice: '{htpasswd_style}'\n  bob: '{hashed}'\n"))
    assert settings.auth_required
    assert settings.cached(None) is False and settings.cached("Bearer x") is False
    assert settings.cached("Basic not-base64!") is False and settings.cached(basic("alice", "right")[:-2]) is False
    assert settings.cached(basic("alice", "right")) is None  # not known yet: bcrypt must run
    assert settings.check(basic("alice", "right")) is True
    assert settings.cached(basic("alice", "right")) is True
    assert settings.check(basic("bob", "right")) is True
    assert settings.check(basic("alice", "wrong")) is False
    assert settings.cached(basic("alice", "wrong")) is False
    assert settings.check(basic("carol", "right")) is False  # unknown user: same cost, refused
    assert settings.check(basic("alice", "right:with:colons")) is False


def test_a_changed_file_is_reloaded_and_a_broken_one_keeps_the_old(tmp_path):
    path = write(tmp_path, "http_server_config:\n  headers:\n    X-A: one\n")
    settings = WebSettings(path)
    assert settings.current.headers == [("X-A", "one")]
    Path(path).write_text("http_server_config:\n  headers:\n    X-A: two, longer\n")
    settings.refresh()
    assert settings.current.headers == [("X-A", "two, longer")]
    Path(path).write_text("nonsense: 1\n")
    settings.refresh()
    assert settings.current.headers == [("X-A", "two, longer")]
