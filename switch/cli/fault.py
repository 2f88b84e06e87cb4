"""``payswitch fault``: inject, list and clear faults on running network simulators.

It talks to the simulators' admin API (``channels/server.py``): ``POST /faults`` with a
JSON :class:`channels.faults.Fault`, ``GET /faults``, ``DELETE /faults/{endpoint}``. The
fault is validated here first, so a bad one is refused with the field path before
anything is sent.

Auth: the request carries ``Authorization: Bearer`` with the operator token from
``--token-file`` or ``$PAYSWITCH_OPERATOR_TOKEN`` (``list`` also accepts the auditor's,
``$PAYSWITCH_AUDITOR_TOKEN``). A refusal is one line naming the status and the reason.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import click
import msgspec

from switch.cli.errors import UserError

if TYPE_CHECKING:
    from channels.faults import Fault
    from switch.serve.http import Role

# httpx, the fault model and the admin API are imported where a fault command runs:
# each costs a tenth of a second, and every other payswitch command (and --help) would
# pay it at start-up.

DEFAULT_ADMIN = "http://127.0.0.1:7280"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")


def parse_duration(text: str, option: str | None = None) -> float:
    """'10s', '250ms', '2m', '1h' or a bare number of seconds; ``option`` names the
    option in the error (``--for``...)."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise click.BadParameter(f"{text!r}: expected e.g. 10s, 250ms, 2m", param_hint=option)
    value = float(match.group(1))
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2) or "s"]


def admin_url(text: str) -> str:
    """``--admin``: an http(s) URL with a host, checked before anything is sent (httpx
    raises ``InvalidURL``, not an ``HTTPError``, for a malformed one)."""
    import httpx

    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, TypeError) as exc:
        raise click.BadParameter(f"{text!r}: not a URL ({exc})", param_hint="--admin") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise click.BadParameter(f"{text!r}: expected an http(s) URL such as {DEFAULT_ADMIN}",
                                 param_hint="--admin")
    return text.rstrip("/")


@click.command()
@click.argument("endpoint")
@click.argument("kind", required=False)
@click.option(
    "--for", "duration", default=None, help="How long, e.g. 10s (default: until cleared)."
)
@click.option("--after", default="0s", show_default=True, help="Start after this delay.")
@click.option("--factor", type=float, default=None, help="slow: latency multiplier.")
@click.option(
    "--rate",
    type=float,
    default=None,
    help="error_burst/reset/malformed/duplicate/late: share of requests, 0..1.",
)
@click.option("--period", default=None, help="flapping: full up+down period, e.g. 4s.")
@click.option("--delay", default=None, help="late: extra delay, e.g. 3s.")
@click.option(
    "--match", multiple=True,
    help="Only route keys with this prefix (repeatable): card number/BIN (card), corridor "
    "such as DE-FR (SWIFT), merchant id such as M0000042 (QR)."
)
@click.option("--admin", default=DEFAULT_ADMIN, show_default=True, help="Simulators' admin URL.")
@click.option("--json", "as_json", is_flag=True, help="list/clear: print the admin API's JSON.")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File holding the admin bearer token (default: $PAYSWITCH_OPERATOR_TOKEN).",
)
def fault(
    endpoint: str,
    kind: str | None,
    duration: str | None,
    after: str,
    factor: float | None,
    rate: float | None,
    period: str | None,
    delay: str | None,
    match: tuple[str, ...],
    admin: str,
    as_json: bool,
    token_file: str | None,
) -> None:
    """Inject, list or clear faults on the running network simulators.

    \b
    payswitch fault ENDPOINT KIND [--for 10s] [options]   inject
    payswitch fault list                                  what is active now
    payswitch fault clear ENDPOINT                        clear an endpoint's faults

    \b
    KIND: down, blackhole, slow (--factor), error_burst (--rate), flapping (--period),
          partial (--match), reset (--rate), malformed (--rate), duplicate (--rate),
          late (--rate --delay)

    ENDPOINT is a network's name in the simulators' config; `payswitch demo` and
    examples/channels.toml run card-primary, card-secondary, swift and qr.

    \b
    Examples:
      payswitch fault card-primary down --for 30s
      payswitch fault swift blackhole --for 10s
      payswitch fault qr slow --factor 5 --for 1m
      payswitch fault card-secondary error_burst --rate 0.3 --for 20s
    """
    admin = admin_url(admin)
    if endpoint == "list":
        auth = _auth(token_file, "operator")
        if auth.source is None:
            auth = _auth(None, "auditor")
        listed = _call("GET", f"{admin}/faults", headers=auth)
        click.echo(json.dumps(listed, indent=2) if as_json else fault_table(listed))
        return
    auth = _auth(token_file, "operator")
    if endpoint == "clear":
        if kind is None:
            raise click.UsageError("missing ENDPOINT: payswitch fault clear ENDPOINT")
        cleared = _call("DELETE", f"{admin}/faults/{kind}", headers=auth)
        if as_json:
            click.echo(json.dumps(cleared))
        else:
            ids = cleared.get("cleared", []) if isinstance(cleared, dict) else []
            click.echo(f"cleared {len(ids)} fault(s) on {kind}"
                       + (f" (ids {', '.join(map(str, ids))})" if ids else ""))
        return
    from channels.faults import FAULT_KINDS, Fault, FaultConfigError

    if kind is None:
        raise click.UsageError(
            f"missing KIND after {endpoint!r}: one of {', '.join(FAULT_KINDS)}"
        )
    if kind not in FAULT_KINDS:
        raise click.BadParameter(
            f"{kind!r}: expected one of {', '.join(FAULT_KINDS)}", param_hint="KIND"
        )
    spec = {
        "kind": kind,
        "endpoint": endpoint,
        "start_s": parse_duration(after, "--after"),
        "duration_s": parse_duration(duration, "--for") if duration else None,
        "factor": factor,
        "rate": rate,
        "period_s": parse_duration(period, "--period") if period else None,
        "delay_s": parse_duration(delay, "--delay") if delay else None,
        "match": list(match) or None,
    }
    try:
        injected = msgspec.convert({k: v for k, v in spec.items() if v is not None}, Fault)
        injected.validate("fault")
    except (msgspec.ValidationError, FaultConfigError) as exc:
        raise UserError(f"invalid fault: {exc}") from None
    try:
        response = _call("POST", f"{admin}/faults", content=msgspec.json.encode(injected),
                         headers=auth)
    except _Refused as refused:
        raise UserError(_contradiction(refused.message, injected, admin, auth)
                        or f"invalid fault: {refused.message}") from None
    click.echo(f"injected: {json.dumps(response)}")


def fault_table(listed: object) -> str:
    """``GET /faults`` as aligned columns, one active fault per line."""
    faults = listed.get("faults", []) if isinstance(listed, dict) else []
    if not faults:
        return "no active faults"
    rows = [("ID", "ENDPOINT", "KIND", "DETAIL", "MATCH", "REMAINING")]
    for f in faults:
        left = f.get("remaining_s")
        rows.append((
            str(f.get("id", "")),
            str(f.get("endpoint", "")),
            str(f.get("kind", "")),
            str(f.get("detail") or "-"),
            ",".join(f.get("match") or []) or "-",
            "until cleared" if left is None else f"{left:.1f}s",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


class _Auth(msgspec.Struct, frozen=True):
    """The ``Authorization`` header to send, and where its token came from (None: no
    token), to say which token the simulators refused."""

    headers: dict[str, str]
    source: str | None


def _auth(token_file: str | None, role: Role) -> _Auth:
    from switch.serve.http import AdminAuthConfig, admin_headers

    if token_file is None:
        headers = admin_headers(role)
        env: str = getattr(AdminAuthConfig(), f"{role}_token_env")
        return _Auth(headers, f"${env}" if headers else None)
    try:
        token = Path(token_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise click.BadParameter(f"cannot read {token_file}: {why}",
                                 param_hint="--token-file") from None
    return _Auth({"authorization": f"Bearer {token}"}, f"--token-file {token_file}")


class _Refused(UserError):
    """HTTP 400 from the simulators: they refused the request; ``message`` says why."""


def _call(method: str, url: str, content: bytes | None = None,
          headers: _Auth | None = None) -> object:
    """The simulators' JSON answer. A refusal of the user's request (token, endpoint,
    fault) is one ``Error:`` line, exit 2 (a 400 as :class:`_Refused`, for the caller to
    word); a server failure or no answer is exit 1. ``headers``: the token to send."""
    import httpx

    auth = headers or _Auth({}, None)
    admin = url.rsplit("/faults", 1)[0]
    try:
        response = httpx.request(
            method, url, content=content, timeout=5.0,
            headers={"content-type": "application/json", **auth.headers},
        )
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach the simulators at {url}: {exc}") from None
    status = response.status_code
    if status >= 400:
        try:
            body = response.json()
        except ValueError:
            body = None
        said = body.get("error") if isinstance(body, dict) else None
        detail = said if isinstance(said, str) else " ".join(response.text.split())[:300]
        if status == 401:
            if auth.source is None:
                reader = " (or $PAYSWITCH_AUDITOR_TOKEN to read)" if method == "GET" else ""
                raise UserError(f"{url}: HTTP 401: the simulators' admin API wants a token: "
                                f"set $PAYSWITCH_OPERATOR_TOKEN{reader} or pass --token-file")
            raise UserError(f"{url}: HTTP 401: the simulators refused the token from "
                            f"{auth.source}: it is not one they were started with")
        if status == 403:
            raise UserError(f"{url}: HTTP 403: {detail} (token from {auth.source})")
        if status == 404 and isinstance(said, str) and "no network named" in said:
            known = body.get("networks") if isinstance(body, dict) else None
            if not isinstance(known, list):
                known = _networks(admin)
            names = f"; known: {', '.join(map(str, known))}" if known else ""
            raise UserError(f"{url}: {said.removeprefix('fault.endpoint: ')}{names}")
        if status == 400:
            raise _Refused(detail.removeprefix("fault: "))
        if status < 500:
            hint = "" if isinstance(said, str) else ": is --admin the simulators' admin URL?"
            raise UserError(f"{url}: HTTP {status}: {detail}{hint}")
        raise click.ClickException(f"{url}: HTTP {status}: {detail}")
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        detail = " ".join(response.text.split())[:120]
        raise click.ClickException(
            f"{url}: HTTP {response.status_code} but not JSON ({detail!r}): is --admin the "
            "simulators' admin URL?") from None


def _networks(admin: str) -> list[str] | None:
    """The simulators' network names from their open ``/healthz``, or None."""
    import httpx

    try:
        answer = httpx.get(f"{admin}/healthz", timeout=2.0).json()
    except (httpx.HTTPError, ValueError):
        return None
    networks = answer.get("networks") if isinstance(answer, dict) else None
    return sorted(map(str, networks)) if isinstance(networks, (dict, list)) else None


_CONFLICT = re.compile(
    r"contradicts active fault id (?P<id>\d+): '(?P<theirs>\w+)' and '\w+' overlap on "
    r"endpoint '(?P<endpoint>[^']*)' for the same route keys during "
    r"\[(?P<begin>[^,\]]+), (?P<end>[^)\]]+)\) s")


def _contradiction(message: str, injected: Fault, admin: str, auth: _Auth) -> str | None:
    """The simulators' "contradicts active fault id 4 ... during [19915.2, 19918.2) s"
    (their internal clock) in the user's terms: the fault in the way, how long it has
    left, and the overlap in seconds from now. None if ``message`` is something else."""
    found = _CONFLICT.search(message)
    if found is None:
        return None
    try:
        overlap = float(found["end"]) - float(found["begin"])
    except ValueError:
        return None
    other, endpoint = int(found["id"]), found["endpoint"]
    lasting = "until cleared" if not math.isfinite(overlap) else f"for {overlap:g} s"
    start = injected.start_s
    when = "starting now" if start == 0 else f"starting in {start:g} s"
    mine = f"{injected.kind} on {endpoint}"
    clear = f"clear it first (payswitch fault clear {endpoint})"
    status = _active(admin, auth, other)
    if status is None:  # not active yet: scheduled to start later
        return (f"{mine} contradicts fault {other} ({found['theirs']} on {endpoint}, not "
                f"started yet): they would overlap {lasting}; {clear} or choose another "
                "--after/--for")
    left = status.get("remaining_s")
    if isinstance(left, (int, float)):
        remaining = f"{left:.1f} s left"
        later = f", or start yours after it ends (--after {math.ceil(left)}s)"
    else:
        remaining, later = "until cleared", ""
    return (f"{mine} contradicts active fault {other} ({found['theirs']} on {endpoint}, "
            f"{remaining}): they would overlap {when}, {lasting}; {clear}{later}")


def _active(admin: str, auth: _Auth, fault_id: int) -> dict[str, object] | None:
    """Active fault ``fault_id`` as ``GET /faults`` lists it, or None."""
    import httpx

    try:
        listed = httpx.get(f"{admin}/faults", headers=auth.headers, timeout=2.0).json()
    except (httpx.HTTPError, ValueError):
        return None
    faults = listed.get("faults") if isinstance(listed, dict) else None
    for entry in faults if isinstance(faults, list) else ():
        if isinstance(entry, dict) and entry.get("id") == fault_id:
            return entry
    return None
