"""`--web.config.file` (exporter-toolkit's format): a real daemon serves its endpoints over real TLS
on loopback, with a certificate made by `openssl` and basic auth checked against bcrypt hashes; a
real Prometheus scrapes it through TLS and basic auth (and fails to with a wrong password); the
certificate is rotated under the running daemon; the `Server` header names no Python version.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import subprocess
import time
from pathlib import Path

import bcrypt
import pytest

from tests.tools import require_tool

from .test_prometheus_loop import RULES, Prometheus, prometheus, prometheus_binary  # noqa: F401  (fixture)

USER, PASSWORD = "prometheus", "s3cret pass:with colon"


def make_cert(home: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA), made by the openssl binary."""
    openssl = require_tool("openssl", "Debian package `openssl`")
    cert, key = home / f"{name}.crt", home / f"{name}.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def client_context(ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = True
    return ctx


def get(port: int, path: str, ctx: ssl.SSLContext, auth: tuple[str, str] | None = None):
    """(status, headers, body) over a fresh HTTPS connection."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def served_cert(port: int) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw) as s:
        return s.getpeercert(binary_form=True)


def pem_der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


@pytest.fixture
def web(tmp_path: Path):
    home = tmp_path / "web"
    home.mkdir()
    cert, key = make_cert(home, "first")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(12)).decode()  # ~0.3 s a check: the cache shows
    hashed = "$2y$" + hashed[4:]  # as htpasswd -B writes it
    config = home / "web-config.yml"
    config.write_text(
        "tls_server_config:\n"
        "  cert_file: tls.crt\n"  # relative: to the web config's directory
        "  key_file: tls.key\n"
        "  min_version: TLS13\n"
        "http_server_config:\n"
        "  headers:\n"
        "    Strict-Transport-Security: max-age=31536000\n"
        f"basic_auth_users:\n  {USER}: '{hashed}'\n"
    )
    (home / "tls.crt").write_bytes(cert.read_bytes())
    (home / "tls.key").write_bytes(key.read_bytes())
    return home, config, cert


@pytest.mark.timeout(180)
def test_tls_and_basic_auth_on_every_endpoint_and_a_rotated_certificate(daemon_factory, tmp_path, web):
    home, config, cert = web
    (tmp_path / "run").mkdir()
    daemon = daemon_factory(
        [{"name": "run", "path": str(tmp_path / "run")}], daemon={"web_config_file": str(config)}, ready=False
    )
    started = daemon.wait_for("http listening")
    assert started["url"].startswith("https://") and started["tls"] is True and started["basic_auth"] is True
    ctx = client_context(cert)

    status, headers, body = get(daemon.port, "/metrics", ctx, (USER, PASSWORD))
    assert status == 200, body
    assert b"ckptwatch_build_info{" in body and b"process_resident_memory_bytes" in body
    assert headers["Server"] == "ckptwatch"  # no Python (nor ckptwatch) version
    assert headers["Strict-Transport-Security"] == "max-age=31536000"
    for path in ("/metrics", "/healthz", "/livez", "/readyz", "/", "/api/v1/checkpoints"):
        for auth in (None, (USER, "wrong"), ("nobody", PASSWORD)):
            status, headers, _ = get(daemon.port, path, ctx, auth)
            assert status == 401 and headers["WWW-Authenticate"] == "Basic", (path, auth, status)
    assert get(daemon.port, "/healthz", ctx, (USER, PASSWORD))[0] == 200

    # a scrape with the right password costs no bcrypt check (cost 12: ~0.3 s each uncached)
    t0 = time.monotonic()
    for _ in range(20):
        assert get(daemon.port, "/metrics", ctx, (USER, PASSWORD))[0] == 200
    assert time.monotonic() - t0 < 3.0

    # plain HTTP on the TLS port: no HTTP answer; a client that does not trust the cert: refused
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        assert b"ckptwatch" not in s.recv(65536)
    with pytest.raises(ssl.SSLCertVerificationError):
        get(daemon.port, "/healthz", ssl.create_default_context())
    old = client_context(cert)
    old.maximum_version = ssl.TLSVersion.TLSv1_2  # below min_version: TLS13
    with pytest.raises(ssl.SSLError):
        get(daemon.port, "/healthz", old, (USER, PASSWORD))

    # the certificate is rotated in place (cert-manager): new connections get the new one
    assert served_cert(daemon.port) == pem_der(cert)
    new_cert, new_key = make_cert(home, "second")
    (home / "tls.key").write_bytes(new_key.read_bytes())
    (home / "tls.crt").write_bytes(new_cert.read_bytes())
    daemon.wait_until(lambda: served_cert(daemon.port) == pem_der(new_cert), 15, "the rotated certificate served")
    daemon.wait_for("web config reloaded")
    assert get(daemon.port, "/metrics", client_context(new_cert), (USER, PASSWORD))[0] == 200

    # a broken change keeps the running settings
    config.write_text(config.read_text() + "unknown_key: 1\n")
    daemon.wait_for("web config reload failed, keeping the previous one", 15)
    assert get(daemon.port, "/healthz", client_context(new_cert), (USER, PASSWORD))[0] == 200


def test_a_bad_web_config_is_one_line_and_exit_2(run_cli, tmp_path):
    (tmp_path / "run").mkdir()
    bad = tmp_path / "web.yml"
    bad.write_text("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n")
    config = tmp_path / "c.toml"
    config.write_text(
        f'[daemon]\nlisten = "127.0.0.1:0"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[[watch]]\nname = "run"\npath = "{tmp_path / "run"}"\n'
    )
    r = run_cli("watch", "--config", config, "--web.config.file", bad, timeout=60)
    assert r.returncode == 2, r
    assert r.stderr.strip().count("\n") == 0 and "tls_server_config.cert_file" in r.stderr, r.stderr
    assert "no such file" in r.stderr and "Traceback" not in r.stderr
    # check-config validates the web config named in the config file too
    config.write_text(config.read_text().replace("[[watch]]", f'web_config_file = "{bad}"\n[[watch]]'))
    r = run_cli("check-config", config, timeout=60)
    assert r.returncode == 2 and "tls_server_config.cert_file" in r.stderr, r
    bad.write_text("basic_auth_users:\n  prometheus: '$2b$04$abcdefghijklmnopqrstuu5Ot5dJ2nVjRC8gC6OhD8GJPOc7Bk7Lu'\n")
    r = run_cli("check-config", config, timeout=60)
    assert r.returncode == 0 and "ok: plain HTTP, basic auth (1 users)" in r.stdout, r


@pytest.mark.timeout(180)
def test_prometheus_scrapes_through_tls_and_basic_auth(daemon_factory, prometheus, tmp_path, web):  # noqa: F811
    prometheus_binary()
    _home, config, cert = web
    (tmp_path / "run").mkdir()
    daemon = daemon_factory(
        [{"name": "run", "path": str(tmp_path / "run")}], daemon={"web_config_file": str(config)}, ready=False
    )
    target = f"127.0.0.1:{daemon.port}"
    prom = Prometheus(tmp_path / "prometheus", target, RULES)

    def job(name: str, password: str) -> dict:
        return {
            "job_name": name,
            "scheme": "https",
            "tls_config": {"ca_file": str(cert)},
            "basic_auth": {"username": USER, "password": password},
            "static_configs": [{"targets": [target]}],
        }

    cfg = json.loads(prom.config.read_text())
    cfg["scrape_configs"] = [job("ckptwatch", PASSWORD), job("wrong-password", "nope")]
    prom.config.write_text(json.dumps(cfg))
    prometheus.append(prom)
    prom.start()
    prom.wait_for("scraped through TLS and basic auth", lambda: prom.query('up{job="ckptwatch"} == 1'))
    prom.wait_for("build_info scraped", lambda: prom.query('ckptwatch_build_info{job="ckptwatch"}'))
    [info] = prom.query('ckptwatch_build_info{job="ckptwatch"}')
    assert {"version", "revision", "python", "tensorflow"} <= set(info["metric"])
    assert prom.query('process_start_time_seconds{job="ckptwatch"}')
    prom.wait_for("the wrong password refused", lambda: prom.query('up{job="wrong-password"} == 0'))
    targets = prom.api("targets")["activeTargets"]
    wrong = next(t for t in targets if t["labels"]["job"] == "wrong-password")
    assert "401" in wrong["lastError"], wrong
