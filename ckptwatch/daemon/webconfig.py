"""`--web.config.file`: TLS and basic auth for the daemon's HTTP server, in the YAML format every
Prometheus exporter reads (github.com/prometheus/exporter-toolkit, docs/web-configuration.md):

    tls_server_config:
      cert_file: /etc/ckptwatch/tls.crt       # PEM; with key_file, turns on TLS
      key_file: /etc/ckptwatch/tls.key
      client_ca_file: /etc/ckptwatch/ca.crt   # optional: client certificates
      client_auth_type: RequireAndVerifyClientCert  # NoClientCert (default), VerifyClientCertIfGiven,
                                                    # RequireAndVerifyClientCert
      min_version: TLS12                      # TLS10..TLS13 (default TLS12); max_version likewise
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}   # added to every response
    basic_auth_users:                         # user: bcrypt hash (htpasswd -nBC 10 USER)
      prometheus: $2y$10$...

Keys the Go toolkit has and Python's ssl module cannot honour the same way (`cipher_suites`,
`curve_preferences`, `prefer_server_cipher_suites`, `http2`) are accepted and ignored with a
warning; any other key is an error, as in the toolkit (strict YAML). Relative paths are relative
to the web config file's directory.

Like the toolkit, the file (and the certificate and key it names) are re-read when they change,
so a rotated certificate (cert-manager) is served without a restart; a change that does not load
keeps the previous settings and is logged once. Basic auth applies to every path. bcrypt costs
~50-100 ms a check: results are cached per (user, password, hash), so a scrape with the right
password costs one dictionary lookup, and checks run on the HTTP pool, never on the loop thread.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import ssl
import threading
from dataclasses import dataclass, field

import structlog

from ckptwatch.errors import UsageError

log = structlog.get_logger("ckptwatch.daemon.http")

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TLS_KEYS = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version", "max_version"}
_IGNORED_TLS_KEYS = {"cipher_suites", "curve_preferences", "prefer_server_cipher_suites", "client_allowed_sans"}
_HTTP_KEYS = {"headers"}
_IGNORED_HTTP_KEYS = {"http2"}
_TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}
# Headers the server sets itself: the toolkit refuses these too.
_RESERVED_HEADERS = {"content-type", "content-length", "content-encoding", "date", "connection", "server"}
# A valid bcrypt hash of a random password: unknown users cost as much as known ones.
_DUMMY_HASH = b"$2b$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DSQmqIEyRNMV8NaZoTFwW"
_CACHE_MAX = 1024


def _fail(path: str, key: str, reason: str) -> UsageError:
    return UsageError(f"{path}: {key}: {reason}" if key else f"{path}: {reason}")


@dataclass
class WebConfig:
    """What one version of the web config file says: a server SSLContext (or None: plain HTTP),
    basic auth users (user -> bcrypt hash; empty: no auth), extra response headers."""

    path: str
    context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: list[tuple[str, str]] = field(default_factory=list)
    files: tuple[str, ...] = ()  # every file it was read from: changes to them reload it

    @property
    def tls(self) -> bool:
        return self.context is not None


def _stamp(files: tuple[str, ...]) -> tuple:
    out: list[tuple[int, int, int] | None] = []
    for f in files:
        try:
            st = os.stat(f)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def load_web_config(path: str) -> WebConfig:
    """Parse and check the file; build the SSLContext (loads the certificate and key). Raises
    UsageError with one line `FILE: key: reason`."""
    import yaml  # only when a web config is given

    path = os.path.abspath(path)
    base = os.path.dirname(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise _fail(path, "", f"cannot read the web config: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise _fail(path, "", f"not valid YAML: {' '.join(str(e).split())}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _fail(path, "", "must be a YAML mapping (tls_server_config, http_server_config, basic_auth_users)")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise _fail(path, sorted(unknown)[0], f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
    config = WebConfig(path)
    files = [path]

    def file_key(section: dict, section_name: str, key: str) -> str | None:
        value = section.get(key)
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            raise _fail(path, f"{section_name}.{key}", "must be a file path")
        full = value if os.path.isabs(value) else os.path.join(base, value)
        if not os.path.isfile(full):
            raise _fail(path, f"{section_name}.{key}", f"{full}: no such file")
        files.append(full)
        return full

    def section(name: str, known: set[str] | frozenset[str]) -> dict | None:
        """data[name]: None when absent; a mapping of `known` keys, else UsageError."""
        value = data.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise _fail(path, name, "must be a mapping")
        unknown = set(value) - known
        if unknown:
            raise _fail(path, f"{name}.{sorted(unknown)[0]}", "unknown key")
        return value

    tls = section("tls_server_config", _TLS_KEYS | _IGNORED_TLS_KEYS)
    if tls is not None:
        ignored = sorted(set(tls) & _IGNORED_TLS_KEYS)
        if ignored:
            log.warning("web config keys ignored (Python's TLS library chooses these)", keys=ignored, file=path)
        cert = file_key(tls, "tls_server_config", "cert_file")
        key = file_key(tls, "tls_server_config", "key_file")
        if cert is None or key is None:
            missing = "cert_file" if cert is None else "key_file"
            raise _fail(path, f"tls_server_config.{missing}", "required for TLS (cert_file and key_file, PEM)")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        for bound, attribute, default in (
            ("min_version", "minimum_version", "TLS12"),
            ("max_version", "maximum_version", None),
        ):
            value = tls.get(bound, default)
            if value is None:
                continue
            if value not in _TLS_VERSIONS:
                raise _fail(path, f"tls_server_config.{bound}", f"{value!r}: use one of {', '.join(_TLS_VERSIONS)}")
            try:
                setattr(ctx, attribute, _TLS_VERSIONS[value])
            except (ValueError, ssl.SSLError) as e:
                raise _fail(path, f"tls_server_config.{bound}", f"{value}: not available here ({e})") from None
        try:
            ctx.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as e:
            raise _fail(path, "tls_server_config", f"cannot load cert_file/key_file: {e}") from None
        auth_type = tls.get("client_auth_type", "NoClientCert") or "NoClientCert"
        if auth_type not in _CLIENT_AUTH:
            raise _fail(
                path,
                "tls_server_config.client_auth_type",
                f"{auth_type!r}: use one of {', '.join(_CLIENT_AUTH)} "
                "(RequestClientCert and RequireAnyClientCert accept unverified certificates: not supported)",
            )
        ca = file_key(tls, "tls_server_config", "client_ca_file")
        if ca is not None and auth_type == "NoClientCert":
            raise _fail(path, "tls_server_config.client_ca_file", "set client_auth_type too (CAs without a policy)")
        if ca is None and auth_type != "NoClientCert":
            raise _fail(path, "tls_server_config.client_auth_type", f"{auth_type} needs client_ca_file")
        if ca is not None:
            try:
                ctx.load_verify_locations(cafile=ca)
            except (ssl.SSLError, OSError) as e:
                raise _fail(path, "tls_server_config.client_ca_file", f"cannot load: {e}") from None
        ctx.verify_mode = _CLIENT_AUTH[auth_type]
        config.context = ctx

    http = section("http_server_config", _HTTP_KEYS | _IGNORED_HTTP_KEYS)
    if http is not None:
        headers = http.get("headers") or {}
        if not isinstance(headers, dict):
            raise _fail(path, "http_server_config.headers", "must be a mapping of header name to value")
        for name, value in headers.items():
            if not isinstance(name, str) or not isinstance(value, str) or "\n" in name + value or "\r" in name + value:
                raise _fail(path, f"http_server_config.headers.{name}", "names and values must be one-line strings")
            if name.lower() in _RESERVED_HEADERS:
                raise _fail(path, f"http_server_config.headers.{name}", "set by the server itself")
            config.headers.append((name, value))

    users = data.get("basic_auth_users")
    if users is not None:
        if not isinstance(users, dict):
            raise _fail(path, "basic_auth_users", "must be a mapping of user name to bcrypt hash")
        for user, hashed in users.items():
            if not isinstance(user, str) or not user or ":" in user:
                raise _fail(path, f"basic_auth_users.{user}", "user names are non-empty strings without ':'")
            if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
                raise _fail(path, f"basic_auth_users.{user}", "must be a bcrypt hash ($2y$..., htpasswd -nBC 10 USER)")
            config.users[user] = hashed.encode()
    config.files = tuple(files)
    return config


class WebSettings:
    """The web config in force for a server: `current` (a WebConfig; a plain one when no file is
    given), re-read by `refresh()` when its files change, and the basic-auth check with its cache."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.current = load_web_config(path) if path else WebConfig("")
        self._stamp = _stamp(self.current.files)
        self._failed: str | None = None
        self._cache: dict[bytes, bool] = {}
        self._lock = threading.Lock()

    @property
    def tls(self) -> bool:
        return self.current.tls

    def refresh(self) -> None:
        """Re-read the file when it (or a file it names) changed; keep the old settings if it fails."""
        if not self.path:
            return
        stamp = _stamp(self.current.files)
        if stamp == self._stamp:
            return
        try:
            new = load_web_config(self.path)
        except UsageError as e:
            if self._failed != str(e):
                self._failed = str(e)
                log.error("web config reload failed, keeping the previous one", error=str(e))
            self._stamp = stamp
            return
        if new.tls != self.current.tls:
            log.warning("web config: TLS turned on or off takes effect at the next restart", file=self.path)
            new.context = self.current.context
        self.current, self._stamp, self._failed = new, _stamp(new.files), None
        with self._lock:
            self._cache.clear()
        log.info("web config reloaded", file=self.path, tls=new.tls, users=len(new.users))

    # -- basic auth ---------------------------------------------------------------------------------

    @property
    def auth_required(self) -> bool:
        return bool(self.current.users)

    def _key(self, authorization: str | None) -> tuple[bytes, str, bytes, bytes] | None:
        if not authorization:
            return None
        scheme, _, encoded = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        if not sep:
            return None
        hashed = self.current.users.get(user, _DUMMY_HASH)
        key = hashlib.sha256(b"\0".join((user.encode(), password.encode(), hashed))).digest()
        return key, user, password.encode(), hashed

    def cached(self, authorization: str | None) -> bool | None:
        """True/False when known at once (no or malformed credentials: False), None when bcrypt
        must run (`check`, on the pool)."""
        parsed = self._key(authorization)
        if parsed is None:
            return False
        with self._lock:
            return self._cache.get(parsed[0])

    def check(self, authorization: str | None) -> bool:
        """The bcrypt check (slow: on the pool), cached."""
        parsed = self._key(authorization)
        if parsed is None:
            return False
        import bcrypt

        key, user, password, hashed = parsed
        ok = False
        with contextlib.suppress(ValueError):
            ok = bcrypt.checkpw(password, hashed)
        ok = ok and user in self.current.users
        with self._lock:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = ok
        return ok
