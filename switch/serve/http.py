"""HTTP serving helpers: bind a socket first, then serve an ASGI app on it with Hypercorn.

Shared by the switch's admin app and the simulators' admin API (channels/), which is why
they live apart from the switch's own admin routes; so is the admin API's bearer-token
auth and audit log (:class:`AdminAuth`, :func:`protect`).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec
import sniffio
from hypercorn.config import Config as HypercornConfig
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_log = logging.getLogger(__name__)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before serving, so port 0 works and the real port is known at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve_http(
    app: ASGIApp, sock: socket.socket, shutdown: Callable[[], Awaitable[None]]
) -> None:
    """Serve ``app`` on an already bound socket until ``shutdown()`` returns."""
    config = HypercornConfig()
    # Hypercorn wraps the fd in its own socket object and closes it. Detach ours, or its
    # garbage collection would close the fd again later -- by then possibly reused by
    # another socket.
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    if sniffio.current_async_library() == "trio":
        from hypercorn.trio import serve as trio_serve

        await trio_serve(app, config, shutdown_trigger=shutdown)  # type: ignore[arg-type]
    else:
        from hypercorn.asyncio import serve as asyncio_serve

        await asyncio_serve(app, config, shutdown_trigger=shutdown)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- admin auth
#
# The admin APIs (the switch's /routes/reload, the simulators' /faults) change what a
# running system does, so they take bearer tokens with two roles, after the operator /
# auditor separation of duties:
#
# * operator: may change state (POST, DELETE, PUT, PATCH) and read;
# * auditor: may read (GET, HEAD) and nothing else.
#
# ``open_paths`` (by default /metrics, /healthz, /readyz: what Prometheus and load
# balancers poll) need no token for reads. A missing or unknown token is 401, a valid
# token without the role 403. Tokens come from a file or an environment variable, never
# from the config file itself; with none configured every protected request is refused.
# Every request that would change state, allowed or not, is appended to the audit log as
# one JSON line (time, role, method, path, status, client address).

Role = Literal["operator", "auditor"]
ROLES: Final[tuple[Role, ...]] = ("operator", "auditor")
TOKEN_MIN, TOKEN_MAX = 16, 512
_READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_ENV_DEFAULT: Final[dict[Role, str]] = {
    "operator": "PAYSWITCH_OPERATOR_TOKEN",
    "auditor": "PAYSWITCH_AUDITOR_TOKEN",
}


class AdminAuthError(ValueError):
    """The admin auth configuration cannot be used; the message names the key or file."""


class AdminAuthConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[admin.auth]``: bearer tokens for the admin API, by role."""

    #: Off: no tokens asked at all (a lab on a closed network only).
    enabled: bool = True
    #: A file holding the operator's token (may change state: reload routes, faults).
    operator_token_file: str | None = None
    #: The environment variable holding it when no file is named.
    operator_token_env: str = _ENV_DEFAULT["operator"]
    #: A file holding the auditor's token (may read, e.g. GET /faults).
    auditor_token_file: str | None = None
    #: The environment variable holding it when no file is named.
    auditor_token_env: str = _ENV_DEFAULT["auditor"]
    #: Paths anyone may read without a token.
    open_paths: Annotated[list[str], msgspec.Meta(max_length=64)] = msgspec.field(
        default_factory=lambda: ["/metrics", "/healthz", "/readyz"])
    #: JSON lines, one per state-changing request; None: the component's default place.
    audit_log: str | None = None


def load_tokens(
    config: AdminAuthConfig, path: str = "admin.auth", environ: Mapping[str, str] | None = None
) -> dict[Role, str]:
    """The configured token of each role (file first, then environment); may be empty."""
    env = os.environ if environ is None else environ
    tokens: dict[Role, str] = {}
    for role in ROLES:
        file: str | None = getattr(config, f"{role}_token_file")
        var: str = getattr(config, f"{role}_token_env")
        if file is not None:
            try:
                token = Path(file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise AdminAuthError(
                    f"{path}.{role}_token_file: cannot read {file}: {why}") from None
            where = f"{path}.{role}_token_file ({file})"
        elif env.get(var):
            token, where = env[var].strip(), f"${var}"
        else:
            continue
        if not TOKEN_MIN <= len(token) <= TOKEN_MAX:
            raise AdminAuthError(
                f"{where}: an {role} token must be {TOKEN_MIN}..{TOKEN_MAX} characters, "
                f"got {len(token)}")
        tokens[role] = token
    if len(tokens) == 2 and tokens["operator"] == tokens["auditor"]:
        raise AdminAuthError(f"{path}: the operator and auditor tokens must differ")
    return tokens


def admin_headers(role: Role = "operator", environ: Mapping[str, str] | None = None
                  ) -> dict[str, str]:
    """``Authorization`` header for tools (CLI, harness) from the role's default env var."""
    env = os.environ if environ is None else environ
    token = env.get(_ENV_DEFAULT[role], "").strip()
    return {"authorization": f"Bearer {token}"} if token else {}


def ensure_demo_tokens(environ: MutableMapping[str, str] | None = None) -> None:
    """For harness runs: random operator/auditor tokens in the environment unless set, so
    the processes the harness starts (which inherit it) and its own requests agree."""
    env = os.environ if environ is None else environ
    for role in ROLES:
        if not env.get(_ENV_DEFAULT[role]):
            env[_ENV_DEFAULT[role]] = secrets.token_hex(24)


class AuditLog:
    """Append-only JSON lines, each flushed and fsynced before the response goes out."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def write(self, entry: Mapping[str, object]) -> None:
        line = json.dumps({"at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                           **entry}, sort_keys=True) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as out:
                out.write(line)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            _log.error("audit log %s: cannot write: %s; entry: %s", self.path, exc, line.strip())


class AdminAuth:
    """ASGI middleware: bearer-token roles and the audit log (see the comment above)."""

    def __init__(self, app: ASGIApp, config: AdminAuthConfig, tokens: Mapping[Role, str],
                 audit: AuditLog | None, component: str) -> None:
        self.app = app
        self.enabled = config.enabled
        self.open_paths = frozenset(config.open_paths)
        self._tokens = [(role, token.encode()) for role, token in tokens.items()]
        self.audit = audit
        self.component = component

    def role_of(self, headers: Headers) -> Role | None:
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credential:
            return None
        given = credential.strip().encode()
        found: Role | None = None
        for role, token in self._tokens:  # compare with every token: constant time
            if hmac.compare_digest(given, token):
                found = role
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        path: str = scope["path"]
        reading = method in _READ_METHODS
        if reading and (not self.enabled or path in self.open_paths):
            await self.app(scope, receive, send)
            return
        role = self.role_of(Headers(scope=scope)) if self.enabled else "operator"
        status = {"code": 500}

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        if role is None:
            # Sent but matching no token: say it was refused, not that none was given (and
            # nothing about the right one).
            sent = bool(Headers(scope=scope).get("authorization", "").strip())
            response: Response = JSONResponse(
                {"error": "the bearer token was refused: it is not a token of this admin API"
                 if sent else "a bearer token is required (Authorization: Bearer <token>)"},
                status_code=401, headers={"www-authenticate": 'Bearer realm="payswitch-admin"'})
            await response(scope, receive, send_and_note)
        elif not reading and role != "operator":
            response = JSONResponse(
                {"error": f"{method} {path} needs the operator role; this token is {role}"},
                status_code=403)
            await response(scope, receive, send_and_note)
        else:
            await self.app(scope, receive, send_and_note)
        if not reading and self.audit is not None:
            client = scope.get("client")
            self.audit.write({
                "component": self.component, "role": role, "method": method, "path": path,
                "status": status["code"], "client": f"{client[0]}:{client[1]}" if client else None,
            })


def protect(app: Starlette, config: AdminAuthConfig, *, component: str,
            default_audit_log: str | Path, path: str = "admin.auth") -> AdminAuth:
    """Wrap an admin app with :class:`AdminAuth`, tokens and audit log from ``config``.

    Raises :class:`AdminAuthError` for a token file that cannot be read or a bad token.
    """
    tokens = load_tokens(config, path)
    if config.enabled and "operator" not in tokens:
        _log.warning("%s admin: no operator token configured (%s or %s.operator_token_file): "
                     "every state change will be refused", component,
                     f"${config.operator_token_env}", path)
    audit = AuditLog(config.audit_log or default_audit_log)
    return AdminAuth(app, config, tokens, audit, component)
