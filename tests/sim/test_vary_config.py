"""Swarm testing: the switch's settings drawn from the seed (``--vary-config``).

The settings are a function of the seed alone, every draw is a configuration the switch
accepts, the draws stay inside what the simulator's checks assume of time, and a short
campaign over drawn settings holds every invariant.
"""

from __future__ import annotations

import io

import msgspec
from click.testing import CliRunner

from switch.cli.simulate import simulate as simulate_command
from switch.serve.config import SwitchConfig
from switch.sim.campaign import SeedOutcome, replay_command, run_campaign
from switch.sim.options import drawn_config, run_config, sim_config
from switch.sim.simulation import SimOptions, Simulation

SEEDS = range(1, 201)


def test_the_settings_are_a_function_of_the_seed() -> None:
    assert drawn_config(7) == drawn_config(7)
    # Different seeds draw different settings: a draw that ignored its seed would give one.
    assert len({msgspec.json.encode(drawn_config(s)) for s in SEEDS}) == len(SEEDS)


def test_every_draw_is_a_configuration_the_switch_accepts() -> None:
    for seed in SEEDS:
        cfg = drawn_config(seed)
        # Through the same validation as a config file: a draw outside a field's bounds
        # fails here, not as a crash inside a run.
        assert msgspec.convert(msgspec.to_builtins(cfg), SwitchConfig) == cfg


def test_draws_stay_inside_what_the_checks_assume() -> None:
    """The stand-in check allows 30 s after a fault; QR forbids inquiries before 90 s; a
    breaker opening on one failure stands in while the issuer answers, by its own
    setting. (The resolver's workers are not held up: the schedule check is
    capacity-aware, test_schedule_check.py.)"""
    for seed in SEEDS:
        cfg = drawn_config(seed)
        breaker = cfg.resilience.breaker
        assert breaker.open_s <= 10.0 and breaker.consecutive_failures != 1
        assert cfg.resolution.qr.first_after_s >= 90.0
        assert cfg.resilience.retry.base_delay_s <= cfg.resilience.retry.max_delay_s


def test_the_draws_cover_each_setting_s_range() -> None:
    """A draw stuck on one value tests one configuration: each varied setting takes more
    than one value across the seeds, and the stand-in is sometimes off."""
    configs = [drawn_config(s) for s in SEEDS]
    varied = {
        "deadline": {c.resilience.payment_deadline_s for c in configs},
        "attempts": {c.resilience.retry.max_attempts for c in configs},
        "budget": {c.resilience.retry_budget.ratio for c in configs},
        "admission": {c.resilience.admission.total for c in configs},
        "max_keys": {c.idempotency.max_keys for c in configs},
        "standin": {c.standin.enabled for c in configs},
        "card first delay": {c.resolution.card.first_after_s for c in configs},
        "resolver workers": {c.resolution.card.workers for c in configs},
    }
    assert all(len(values) > 1 for values in varied.values()), varied


def test_without_the_flag_the_fixed_configuration_runs() -> None:
    assert run_config(SimOptions(seed=3)) == sim_config()
    assert run_config(SimOptions(seed=3, vary_config=True)) == drawn_config(3)
    assert Simulation(SimOptions(seed=3, vary_config=True)).config == drawn_config(3)


def test_a_failing_seed_s_replay_command_keeps_the_flag() -> None:
    outcome = SeedOutcome(9, 10.0, 1.0, 100, 1, "", ("terminal-once|P1-1|x",))
    command = replay_command(outcome, SimOptions(seed=9, vary_config=True))
    assert "--vary-config" in command and "--seed 9" in command
    assert "--vary-config" not in replay_command(outcome, SimOptions(seed=9))


def test_a_campaign_over_drawn_settings_holds_every_invariant() -> None:
    out = io.StringIO()
    template = SimOptions(seed=0, duration_s=10.0, rate=100.0, intensity=20.0,
                          crashes=True, disk=True, vary_config=True)
    summary = run_campaign(range(1, 21), template, 1, out)
    assert summary.seeds == 20 and summary.faults > 20
    assert not summary.failed, out.getvalue()


def test_the_cli_flag_reaches_the_run() -> None:
    runner = CliRunner()
    fixed = runner.invoke(simulate_command, ["--seed", "4", "--duration", "5s"])
    varied = runner.invoke(simulate_command, ["--seed", "4", "--duration", "5s",
                                              "--vary-config"])
    assert fixed.exit_code == 0 and varied.exit_code == 0, fixed.output + varied.output
    hashes = [line for r in (fixed, varied) for line in r.output.splitlines()
              if line.startswith("trace hash:")]
    assert len(hashes) == 2 and hashes[0] != hashes[1]
