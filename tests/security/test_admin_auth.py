"""Admin APIs need a bearer token (issue 11, defect 13).

Anyone who could reach them could reload routes (switch) and inject faults (simulators).
Now: operator may change state, auditor may read, /metrics /healthz /readyz stay open,
and every state change (allowed or refused) is a JSON line in the audit log.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from switch.serve.http import AdminAuthConfig, AdminAuthError, load_tokens
from tests.conftest import TEST_AUDITOR_TOKEN, TEST_OPERATOR_TOKEN, make_config, start_switch
from tests.sims.test_card import running
from tests.sims.test_faults_e2e import three_networks

pytestmark = pytest.mark.anyio

OPERATOR = {"authorization": f"Bearer {TEST_OPERATOR_TOKEN}"}
AUDITOR = {"authorization": f"Bearer {TEST_AUDITOR_TOKEN}"}
WRONG = {"authorization": "Bearer not-a-token-of-anyone-here"}
FAULT = {"kind": "error_burst", "endpoint": "card", "rate": 1.0, "duration_s": 30}


def audit_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_simulator_faults_need_the_operator_and_are_audited(tmp_path: Path) -> None:
    cfg = three_networks()
    audit = tmp_path / "audit.jsonl"
    cfg["admin"] = {"enabled": True, "auth": {"audit_log": str(audit)}}
    async with running(cfg) as sims:
        base = f"http://127.0.0.1:{sims.runtime.admin_port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            assert (await http.post("/faults", json=FAULT)).status_code == 401
            assert (await http.post("/faults", json=FAULT, headers=WRONG)).status_code == 401
            assert (await http.post("/faults", json=FAULT, headers=AUDITOR)).status_code == 403
            assert (await http.delete("/faults/card", headers=AUDITOR)).status_code == 403
            assert sims.runtime.timeline.describe(anyio.current_time()) == []
            assert (await http.get("/faults")).status_code == 401
            assert (await http.get("/faults", headers=AUDITOR)).status_code == 200
            created = await http.post("/faults", json=FAULT, headers=OPERATOR)
            assert created.status_code == 201
            assert (await http.delete("/faults/card", headers=OPERATOR)).status_code == 200
            for open_path in ("/metrics", "/healthz"):
                assert (await http.get(open_path)).status_code == 200
    lines = audit_lines(audit)
    assert [(e["method"], e["path"], e["role"], e["status"]) for e in lines] == [
        ("POST", "/faults", None, 401),
        ("POST", "/faults", None, 401),
        ("POST", "/faults", "auditor", 403),
        ("DELETE", "/faults/card", "auditor", 403),
        ("POST", "/faults", "operator", 201),
        ("DELETE", "/faults/card", "operator", 200),
    ]
    assert all(e["component"] == "channels" and e["at"] and e["client"] for e in lines)
    assert TEST_OPERATOR_TOKEN not in audit.read_text()


async def test_switch_route_reload_needs_the_operator_and_is_audited(tmp_path: Path) -> None:
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, make_config(tmp_path))
        base = f"http://127.0.0.1:{switch.endpoints.admin_port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            assert (await http.post("/routes/reload")).status_code == 401
            assert (await http.post("/routes/reload", headers=AUDITOR)).status_code == 403
            # Authorized: this switch has no route table, which the handler says (422).
            assert (await http.post("/routes/reload", headers=OPERATOR)).status_code == 422
            for open_path in ("/metrics", "/healthz", "/readyz"):
                assert (await http.get(open_path)).status_code == 200
        switch.app.request_shutdown()
    lines = audit_lines(tmp_path / "admin-audit.jsonl")  # default: beside the journal
    assert [(e["role"], e["status"]) for e in lines] == [
        (None, 401), ("auditor", 403), ("operator", 422)]


async def test_open_paths_are_configurable(tmp_path: Path) -> None:
    extra = '[admin.auth]\nopen_paths = ["/healthz"]\n'
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, make_config(tmp_path, extra))
        base = f"http://127.0.0.1:{switch.endpoints.admin_port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/metrics")).status_code == 401
            assert (await http.get("/metrics", headers=AUDITOR)).status_code == 200
        switch.app.request_shutdown()


async def test_without_an_operator_token_every_change_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PAYSWITCH_OPERATOR_TOKEN")
    monkeypatch.delenv("PAYSWITCH_AUDITOR_TOKEN")
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, make_config(tmp_path))
        base = f"http://127.0.0.1:{switch.endpoints.admin_port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            assert (await http.post("/routes/reload", headers=OPERATOR)).status_code == 401
        switch.app.request_shutdown()


def test_token_errors_name_the_file_or_variable(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(AdminAuthError, match=rf"admin.auth.operator_token_file: cannot read "
                                             rf"{missing}"):
        load_tokens(AdminAuthConfig(operator_token_file=str(missing)), environ={})
    with pytest.raises(AdminAuthError, match=r"\$PAYSWITCH_AUDITOR_TOKEN: .*16\.\.512"):
        load_tokens(AdminAuthConfig(), environ={"PAYSWITCH_AUDITOR_TOKEN": "short"})
    same = "s" * 20
    with pytest.raises(AdminAuthError, match="must differ"):
        load_tokens(AdminAuthConfig(), environ={"PAYSWITCH_OPERATOR_TOKEN": same,
                                               "PAYSWITCH_AUDITOR_TOKEN": same})


def test_fault_cli_sends_the_operator_token(tmp_path: Path) -> None:
    from loadtests.harness.processes import start_channels, stop_switch

    proc, ready = start_channels(tmp_path)
    try:
        admin = f"http://127.0.0.1:{ready['admin_port']}"
        cli = [sys.executable, "-m", "switch.cli.main", "fault"]
        ok = subprocess.run([*cli, "card-primary", "down", "--for", "5s", "--admin", admin],
                            capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0 and ok.stdout.startswith("injected:"), ok.stderr
        token_file = tmp_path / "auditor.token"
        token_file.write_text(TEST_AUDITOR_TOKEN)
        denied = subprocess.run([*cli, "clear", "card-primary", "--admin", admin,
                                 "--token-file", str(token_file)],
                                capture_output=True, text=True, timeout=60)
        assert denied.returncode == 2  # a refused token is the user's to fix: exit 2
        assert len(denied.stderr.strip().splitlines()) == 1 and "HTTP 403" in denied.stderr
    finally:
        stop_switch(proc)
