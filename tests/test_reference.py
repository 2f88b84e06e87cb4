"""docs/reference/ is generated from the Structs and current; every example in it loads;
examples/switch-sim.toml really serves payments through examples/channels.toml's networks."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from switch.cli import reference

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs" / "reference").glob("*.md"))
TOML_BLOCK = re.compile(r"^```toml\n(.*?)^```", re.M | re.S)


def test_reference_pages_are_up_to_date() -> None:
    proc = subprocess.run([sys.executable, "-m", "switch.cli.reference", "--check"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_check_mode_names_a_stale_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(reference, "OUT_DIR", tmp_path)
    assert reference.main([]) == 0
    assert reference.main(["--check"]) == 0
    (tmp_path / "scenario.md").write_text("edited by hand\n")
    assert reference.main(["--check"]) == 1
    assert "scenario.md: stale; run `make docs`" in capsys.readouterr().err


def test_every_format_has_a_page_with_examples() -> None:
    slugs = {fmt.slug for fmt in reference.formats()}
    assert slugs == {"switch-config", "channels-config", "routes", "scenario", "workload"}
    assert {p.stem for p in PAGES} == slugs | {"README"}
    for slug in slugs:
        assert TOML_BLOCK.search((ROOT / "docs" / "reference" / f"{slug}.md").read_text())


@pytest.mark.parametrize("page", [p for p in PAGES if p.stem != "README"], ids=lambda p: p.stem)
def test_every_toml_block_in_a_page_loads_with_its_format(page: Path) -> None:
    load = reference.loaders()[page.stem]
    blocks = TOML_BLOCK.findall(page.read_text())
    assert blocks
    for block in blocks:
        load(block)  # raises (naming the key path) if an example does not load


def test_a_broken_example_would_not_load() -> None:
    """The loaders used above do refuse a bad key: the example test can fail."""
    load = reference.loaders()["scenario"]
    text = (ROOT / "loadtests" / "scenarios" / "card-primary-outage.toml").read_text()
    with pytest.raises(ValueError, match=r"assertions\.p99_ms: unknown key"):
        load(text.replace("p99_ms_max", "p99_ms"))


def test_field_comments_reach_the_page() -> None:
    page = (ROOT / "docs" / "reference" / "switch-config.md").read_text()
    # ServerConfig.max_queue_delay_s carries a #: comment in switch/serve/config.py.
    row = next(line for line in page.splitlines() if line.startswith("| `max_queue_delay_s`"))
    assert "refused as overloaded" in row


def test_switch_sim_example_serves_through_the_simulators(tmp_path: Path) -> None:
    """The examples/ pair, with the ports the simulators really got (the fixed ones may be
    taken on a shared machine): a payment per channel is answered by a simulator."""
    import anyio

    from loadtests.harness.client import SwitchClient
    from loadtests.harness.processes import start_channels, start_switch, stop_switch
    from loadtests.harness.workload import Workload
    from switch.protocols.wire import Reply

    sim = (ROOT / "examples" / "switch-sim.toml").read_text()
    channels_proc, ready = start_channels(tmp_path)
    try:
        for name, info in ready.items():
            if name != "admin_port":
                sim = re.sub(rf'(name = "{name}"\nport = )\d+', rf"\g<1>{info['port']}", sim)
        sim = sim.replace('"examples/routes.toml"', f'"{ROOT / "examples" / "routes.toml"}"')
        sim = sim.replace('"var/journal.db"', f'"{tmp_path / "journal.db"}"')
        sim = re.sub(r"^port = 71\d\d", "port = 0", sim, flags=re.M)
        config = tmp_path / "switch-sim.toml"
        config.write_text(sim)
        assert {n["name"] for n in tomllib.loads(sim)["channel_networks"]} == {
            n for n in ready if n != "admin_port"}
        switch_proc, endpoints = start_switch(config, tmp_path / "ready.json")
        try:
            async def pay() -> set[tuple[str, str]]:
                workload = Workload(5)
                seen: set[tuple[str, str]] = set()
                async with SwitchClient.connect("127.0.0.1", endpoints["port"]) as client:
                    for _ in range(60):
                        request, kind = workload.next()
                        if kind != "new":
                            continue
                        reply = await client.pay(request)
                        assert isinstance(reply, Reply), reply
                        seen.add((request.channel, reply.result.route))
                return seen

            seen = anyio.run(pay)
        finally:
            stop_switch(switch_proc)
    finally:
        stop_switch(channels_proc)
    assert {ch for ch, _ in seen} == {"card", "swift", "qr"}
    assert {route for _, route in seen} >= {"card-primary", "swift", "qr"}
