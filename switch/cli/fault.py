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
import re
from pathlib import Path

import click
import httpx
import msgspec

from channels.faults import FAULT_KINDS, Fault, FaultConfigError
from switch.cli.errors import UserError
from switch.serve.http import Role, admin_headers

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
        headers = _auth(token_file, "operator") or _auth(None, "auditor")
        listed = _call("GET", f"{admin}/faults", headers=headers)
        click.echo(json.dumps(listed, indent=2) if as_json else fault_table(listed))
        return
    headers = _auth(token_file, "operator")
    if endpoint == "clear":
        if kind is None:
            raise click.UsageError("missing ENDPOINT: payswitch fault clear ENDPOINT")
        cleared = _call("DELETE", f"{admin}/faults/{kind}", headers=headers)
        if as_json:
            click.echo(json.dumps(cleared))
        else:
            ids = cleared.get("cleared", []) if isinstance(cleared, dict) else []
            click.echo(f"cleared {len(ids)} fault(s) on {kind}"
                       + (f" (ids {', '.join(map(str, ids))})" if ids else ""))
        return
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
    response = _call("POST", f"{admin}/faults", content=msgspec.json.encode(injected),
                     headers=headers)
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


def _auth(token_file: str | None, role: Role) -> dict[str, str]:
    if token_file is None:
        return admin_headers(role)
    try:
        token = Path(token_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise click.BadParameter(f"cannot read {token_file}: {why}",
                                 param_hint="--token-file") from None
    return {"authorization": f"Bearer {token}"}


def _call(method: str, url: str, content: bytes | None = None,
          headers: dict[str, str] | None = None) -> object:
    try:
        response = httpx.request(
            method, url, content=content, timeout=5.0,
            headers={"content-type": "application/json", **(headers or {})},
        )
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach the simulators at {url}: {exc}") from None
    if response.status_code >= 400:
        hint = ""
        if response.status_code == 401:
            hint = " (set $PAYSWITCH_OPERATOR_TOKEN or pass --token-file)"
        detail = " ".join(response.text.split())[:300]
        raise click.ClickException(
            f"{url}: HTTP {response.status_code}: {detail}{hint}")
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        detail = " ".join(response.text.split())[:120]
        raise click.ClickException(
            f"{url}: HTTP {response.status_code} but not JSON ({detail!r}): is --admin the "
            "simulators' admin URL?") from None
