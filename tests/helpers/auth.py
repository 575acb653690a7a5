"""Building blocks for auth tests: htpasswd files, TLS material, a Docker token issuer.

Everything here is real: registries read the htpasswd file and verify the issuer's JWTs
against its CA, and TLS material is a throwaway CA (trustme) whose certificates the
registry serves and checks. Nothing imitates the registry protocol.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import bcrypt
import jwt
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

SERVICE = "syncd-test-registry"
ISSUER = "syncd-test-issuer"

# -- htpasswd --------------------------------------------------------------------------


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    """An htpasswd file with bcrypt hashes (the only kind distribution accepts)."""
    lines = []
    for user, password in users.items():
        # Cost 5 keeps each registry-side check fast; the format is what matters here.
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
        lines.append(f"{user}:{hashed}")
    path.write_text("\n".join(lines) + "\n")
    return path


def htpasswd_auth(path: Path, realm: str = "syncd-test") -> dict[str, Any]:
    """The ``auth:`` section of a registry config for Basic auth."""
    return {"htpasswd": {"realm": realm, "path": str(path)}}


# -- TLS -------------------------------------------------------------------------------


@dataclass
class TLSMaterial:
    """A throwaway CA with a server certificate (127.0.0.1, localhost) and a client one.

    ``registry_tls`` is the ``tls=`` argument of ``RegistryFactory``; ``mtls_http`` the
    ``http=`` extra that makes a registry demand a client certificate from this CA.
    """

    ca: trustme.CA
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_combined: Path  # key and certificate in one PEM

    @property
    def registry_tls(self) -> tuple[str, str]:
        return (str(self.server_cert), str(self.server_key))

    @property
    def mtls_http(self) -> dict[str, Any]:
        return {"tls": {"clientcas": [str(self.ca_file)]}}

    def client_context(self, *, with_cert: bool = False) -> Any:
        """An ``ssl.SSLContext`` for the plain test client (seeding, checking)."""
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if with_cert:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx


def make_tls(directory: Path) -> TLSMaterial:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="syncd test CA")
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("syncd-client@example.com", common_name="syncd-client")
    paths = {
        "ca_file": directory / "ca.pem",
        "server_cert": directory / "server.pem",
        "server_key": directory / "server-key.pem",
        "client_cert": directory / "client.pem",
        "client_key": directory / "client-key.pem",
        "client_combined": directory / "client-combined.pem",
    }
    ca.cert_pem.write_to_path(str(paths["ca_file"]))
    server.cert_chain_pems[0].write_to_path(str(paths["server_cert"]))
    for extra in server.cert_chain_pems[1:]:
        extra.write_to_path(str(paths["server_cert"]), append=True)
    server.private_key_pem.write_to_path(str(paths["server_key"]))
    client.cert_chain_pems[0].write_to_path(str(paths["client_cert"]))
    client.private_key_pem.write_to_path(str(paths["client_key"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(paths["client_combined"]))
    return TLSMaterial(ca=ca, **paths)


# -- the token issuer ------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRequest:
    """One request the issuer answered, for tests that count or inspect them."""

    method: str  # GET or POST
    grant_type: str  # "basic", "anonymous", "password", "refresh_token"
    account: str | None
    scopes: tuple[str, ...]
    status: int
    offline: bool
    at: float


# (resource pattern, actions): the pattern matches "type:name", e.g. "repository:team/*".
Grant = tuple[str, str]
DEFAULT_ACL: dict[str, list[Grant]] = {
    "reader": [("repository:*", "pull")],
    "writer": [("repository:*", "pull,push"), ("registry:catalog", "*")],
    "admin": [("repository:*", "*"), ("registry:catalog", "*")],
    # The anonymous user: public repositories only.
    "": [("repository:public/*", "pull")],
}


@dataclass
class TokenIssuer:
    """A Docker token server (distribution's token spec, plus its OAuth2 POST variant).

    * ``GET /token?service=&scope=…[&offline_token=true]`` with Basic auth, or anonymous.
    * ``POST /token`` form: ``grant_type=password`` (username, password) or
      ``grant_type=refresh_token`` (refresh_token), ``service``, ``scope``, ``client_id``,
      ``access_type=offline`` for a refresh token.

    Tokens are JWTs signed with a key whose certificate is issued by ``ca``; the header's
    ``x5c`` carries that chain, and the registry's ``rootcertbundle`` is ``ca_file``.
    Access is the intersection of the requested and the ``acl`` actions, as the spec says.
    """

    directory: Path
    users: dict[str, str]
    acl: dict[str, list[Grant]] = field(default_factory=lambda: dict(DEFAULT_ACL))
    lifetime: int = 300
    algorithm: str = "RS256"  # or "ES256"
    post_supported: bool = True
    service: str = SERVICE
    issuer: str = ISSUER
    requests: list[TokenRequest] = field(default_factory=list)
    # Tokens that the registry will reject although expires_in says they are fresh.
    stale_tokens: int = 0
    # Every token, access token and refresh token handed out, for redaction checks.
    issued: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        key_type = trustme.KeyType.RSA if self.algorithm == "RS256" else trustme.KeyType.ECDSA
        self.ca = trustme.CA(organization_name="syncd token CA", key_type=key_type)
        signer = self.ca.issue_cert("token-issuer.syncd.test", key_type=key_type)
        self._key = signer.private_key_pem.bytes()
        self.x5c = [
            base64.b64encode(
                x509.load_pem_x509_certificate(pem.bytes()).public_bytes(Encoding.DER)
            ).decode()
            for pem in signer.cert_chain_pems
        ]
        self.ca_file = self.directory / "token-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self._refresh: dict[str, str] = {}  # refresh token -> account
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> TokenIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer._handle(self, "GET")

            def do_POST(self) -> None:
                issuer._handle(self, "POST")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the request log is issuer.requests

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    @property
    def port(self) -> int:
        assert self._server is not None, "issuer not started"
        return int(self._server.server_address[1])

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def registry_auth(self) -> dict[str, Any]:
        """The ``auth:`` section of a registry config trusting this issuer."""
        return {
            "token": {
                "realm": self.realm,
                "service": self.service,
                "issuer": self.issuer,
                "rootcertbundle": str(self.ca_file),
            }
        }

    # -- tokens ------------------------------------------------------------------------
    def grant(self, account: str | None, scopes: list[str]) -> list[dict[str, Any]]:
        """The ``access`` claim for ``account``: requested actions the ACL allows."""
        rules = self.acl.get(account or "", [])
        access: list[dict[str, Any]] = []
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) < 3:
                continue
            rtype, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
            allowed: set[str] = set()
            for pattern, acts in rules:
                if fnmatch.fnmatchcase(f"{rtype}:{name}", pattern):
                    allowed |= {"*"} if acts == "*" else set(acts.split(","))
            granted = [a for a in actions if a in allowed or "*" in allowed]
            if granted:
                access.append({"type": rtype, "name": name, "actions": granted})
        return access

    def mint(self, account: str | None, scopes: list[str], *, stale: bool = False) -> str:
        """A signed token, as the issuer would hand it out (also for seeding in tests)."""
        now = int(time.time())
        # A stale token looks fresh to the client (expires_in) but the registry refuses it:
        # it expired an hour ago, beyond any clock-skew leeway.
        exp = now - 3600 if stale else now + self.lifetime
        claims = {
            "iss": self.issuer,
            "sub": account or "",
            "aud": self.service,
            "exp": exp,
            "nbf": (exp - self.lifetime - 7200) if stale else now - 5,
            "iat": (exp - self.lifetime) if stale else now,
            "jti": uuid.uuid4().hex,
            "access": self.grant(account, scopes),
        }
        token = jwt.encode(claims, self._key, algorithm=self.algorithm, headers={"x5c": self.x5c})
        with self._lock:
            self.issued.append(token)
        return token

    def count(self, **match: Any) -> int:
        """How many logged requests have every given field equal (e.g. grant_type=...)."""
        with self._lock:
            reqs = list(self.requests)
        return sum(all(getattr(r, k) == v for k, v in match.items()) for r in reqs)

    def issue_refresh_token(self, account: str) -> str:
        """A refresh token for ``account``, as ``docker login`` stores an identity token."""
        return self._new_refresh(account)

    def seed_token(self, repository: str) -> str:
        """A token with every right on one repository, for seeding test images."""
        return self.mint("admin", [f"repository:{repository}:pull,push"])

    def revoke_refresh_tokens(self) -> None:
        with self._lock:
            self._refresh.clear()

    # -- the HTTP side -----------------------------------------------------------------
    def _log(
        self,
        method: str,
        grant_type: str,
        account: str | None,
        scopes: tuple[str, ...],
        status: int,
        offline: bool,
    ) -> None:
        entry = TokenRequest(method, grant_type, account, scopes, status, offline, time.monotonic())
        with self._lock:
            self.requests.append(entry)

    def _reply(self, h: BaseHTTPRequestHandler, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        if status == 401:
            h.send_header("WWW-Authenticate", 'Basic realm="syncd-test-issuer"')
        h.end_headers()
        h.wfile.write(body)

    def _basic(self, h: BaseHTTPRequestHandler) -> tuple[str | None, bool]:
        """(account, ok) from a Basic header; (None, True) when there is none."""
        header = h.headers.get("Authorization", "")
        if not header:
            return None, True
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None, False
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return None, False
        return user, self._check(user, password)

    def _check(self, user: str, password: str) -> bool:
        expected = self.users.get(user)
        return expected is not None and secrets.compare_digest(expected, password)

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(h.path)
        if url.path != "/token":
            self._reply(h, 404, {"errors": [{"code": "NOT_FOUND", "message": "no such path"}]})
            return
        if method == "GET":
            self._handle_get(h, parse_qsl(url.query))
            return
        if not self.post_supported:
            self._log("POST", "", None, (), 405, False)
            self._reply(h, 405, {"errors": [{"code": "UNSUPPORTED", "message": "use GET"}]})
            return
        length = int(h.headers.get("Content-Length", "0") or 0)
        form = parse_qsl(h.rfile.read(min(length, 65536)).decode())
        self._handle_post(h, form)

    def _handle_get(self, h: BaseHTTPRequestHandler, query: list[tuple[str, str]]) -> None:
        q = dict(query)
        scopes = [s for k, v in query if k == "scope" for s in v.split(" ") if s]
        offline = q.get("offline_token") == "true"
        account, ok = self._basic(h)
        kind = "basic" if account is not None else "anonymous"
        if not ok:
            self._log("GET", kind, account, tuple(scopes), 401, offline)
            self._reply(
                h,
                401,
                {"errors": [{"code": "UNAUTHORIZED", "message": "invalid username or password"}]},
            )
            return
        if q.get("service") != self.service:
            self._log("GET", kind, account, tuple(scopes), 400, offline)
            self._reply(h, 400, {"errors": [{"code": "DENIED", "message": "unknown service"}]})
            return
        self._log("GET", kind, account, tuple(scopes), 200, offline)
        doc = self._token_doc(account, scopes)
        if offline and account is not None:
            doc["refresh_token"] = self._new_refresh(account)
        self._reply(h, 200, doc)

    def _handle_post(self, h: BaseHTTPRequestHandler, form: list[tuple[str, str]]) -> None:
        f = dict(form)
        grant = f.get("grant_type", "")
        scopes = [s for k, v in form if k == "scope" for s in v.split(" ") if s]
        offline = f.get("access_type") == "offline"
        account: str | None = None
        if not f.get("client_id") or f.get("service") != self.service:
            self._log("POST", grant, None, tuple(scopes), 400, offline)
            self._reply(h, 400, {"error": "invalid_request", "error_description": "bad request"})
            return
        if grant == "password":
            account = f.get("username", "")
            ok = self._check(account, f.get("password", ""))
        elif grant == "refresh_token":
            with self._lock:
                account = self._refresh.get(f.get("refresh_token", ""))
            ok = account is not None
        else:
            self._log("POST", grant, None, tuple(scopes), 400, offline)
            self._reply(h, 400, {"error": "unsupported_grant_type"})
            return
        if not ok:
            self._log("POST", grant, account, tuple(scopes), 401, offline)
            self._reply(
                h,
                401,
                {"error": "invalid_grant", "error_description": "invalid credentials"},
            )
            return
        self._log("POST", grant, account, tuple(scopes), 200, offline)
        doc = self._token_doc(account, scopes)
        del doc["token"]  # the OAuth2 answer carries access_token only
        doc["scope"] = " ".join(scopes)
        if offline and account is not None and grant == "password":
            doc["refresh_token"] = self._new_refresh(account)
        self._reply(h, 200, doc)

    def _new_refresh(self, account: str) -> str:
        token = "rt-" + secrets.token_urlsafe(24)
        with self._lock:
            self._refresh[token] = account
            self.issued.append(token)
        return token

    def _token_doc(self, account: str | None, scopes: list[str]) -> dict[str, Any]:
        with self._lock:
            stale = self.stale_tokens > 0
            if stale:
                self.stale_tokens -= 1
        token = self.mint(account, scopes, stale=stale)
        return {
            "token": token,
            "access_token": token,
            "expires_in": self.lifetime,
            "issued_at": datetime.now(UTC).isoformat(),
        }
