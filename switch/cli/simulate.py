"""``payswitch simulate``: deterministic simulation of the whole switch in virtual time.

The machinery is switch/sim/; this module only parses options. Imports stay inside the
command so ``payswitch --help`` does not pay for them.
"""

from __future__ import annotations

import re
import sys

import click

from switch.cli.errors import UserError, require_utf8

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

#: Peak memory of one seed's run, per accepted payment, and of the process before any.
#: Measured (maximum RSS of the simulated hour at 200/s: 708,256 payments); a run keeps
#: its journal and every payment's history until the end-of-run checks.
BYTES_PER_PAYMENT = 4_400
BASELINE_BYTES = 200 << 20
#: Share of the machine's available memory a run may plan to take.
MEMORY_SHARE = 0.8


def planned_bytes(duration_s: float, rate: float, at_once: int) -> int:
    """Peak memory of ``at_once`` seeds of ``duration_s`` at ``rate`` running together."""
    assert duration_s >= 0 and rate > 0 and at_once >= 1
    return at_once * (BASELINE_BYTES + int(duration_s * rate * BYTES_PER_PAYMENT))


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def check_memory(duration_text: str, duration_s: float, rate: float, at_once: int,
                 available: int | None) -> None:
    """Refuse, before starting, a run that cannot fit: the kernel's OOM killer would end
    it hours in with nothing printed."""
    need = planned_bytes(duration_s, rate, at_once)
    if available is None or need <= MEMORY_SHARE * available:
        return
    gib = 1 << 30
    each, fewer = (f" ({at_once} seeds at once)", ", --rate or --processes") if at_once > 1 \
        else ("", " or --rate")
    raise UserError(
        f"--duration {duration_text.strip()} at --rate {rate:g}/s needs about"
        f" {need / gib:.1f} GiB{each}: a run keeps ~{BYTES_PER_PAYMENT / 1000:.1f} kB per"
        f" payment until its checks, and this machine has {available / gib:.1f} GiB"
        f" available; lower --duration{fewer}")


def parse_duration(text: str) -> float:
    """"10m" -> 600.0; a bare number is seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise click.BadParameter(f"{text!r}: expected a number with an optional unit "
                                 "(ms, s, m, h, d), e.g. 10m", param_hint="--duration")
    return float(match[1]) * _UNIT[match[2]]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--seeds", type=click.IntRange(1, 10_000_000), default=None,
              help="Run seeds 1..N (or --first-seed..) in parallel processes.")
@click.option("--seed", type=click.IntRange(0), default=None,
              help="Run one seed and print its trace hash (and a trace with --trace).")
@click.option("--first-seed", type=click.IntRange(0), default=1, show_default=True)
@click.option("--duration", "duration_text", default="10m", show_default=True,
              help="Simulated load per seed (e.g. 90s, 10m, 1h); resolution drains after.")
@click.option("--rate", type=click.FloatRange(0.1, 100_000), default=200.0, show_default=True,
              help="Payments per simulated second (Poisson arrivals).")
@click.option("--faults", "intensity", type=click.FloatRange(0, 100), default=1.0,
              show_default=True, help="Fault intensity: 1.0 is ~6 network faults, one crash "
              "and one disk stall per 10 simulated minutes.")
@click.option("--no-crashes", is_flag=True, help="No switch crashes nor journal failures.")
@click.option("--vary-config", is_flag=True,
              help="Draw the switch's settings (deadlines, retries, breakers, admission, "
              "resolution, idempotency window, stand-in) from each seed, not one fixed set.")
@click.option("--processes", type=click.IntRange(1, 256), default=None,
              help="Worker processes (default: CPU count).")
@click.option("--trace", "trace_key", default=None,
              help="With --seed: print every event of this payment id or idempotency key.")
@click.option("--shrink", is_flag=True,
              help="With --seed: reduce its fault schedule to one that still fails.")
@click.option("--scenario", "scenario_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="Run a scenario file in virtual time; prints its verdicts.")
def simulate(seeds: int | None, seed: int | None, first_seed: int, duration_text: str,
             rate: float, intensity: float, no_crashes: bool, vary_config: bool,
             processes: int | None,
             trace_key: str | None, shrink: bool, scenario_file: str | None) -> None:
    """Simulate the switch, its networks and its disk in virtual time, under seeded faults.

    Runs the real payment core against simulated issuers and a simulated journal disk,
    checks every invariant during and after each run, and exits 1 if any failed. The same
    seed always gives the same trace hash.
    """
    import os

    from switch.sim.campaign import (
        print_seed,
        print_summary,
        quiet,
        run_campaign,
        run_scenario_file,
    )
    from switch.sim.campaign import (
        shrink as shrink_schedule,
    )
    from switch.sim.simulation import SimOptions
    from switch.sim.simulation import simulate as simulate_one

    out = sys.stdout
    # Options of one mode given to another were silently ignored (--seeds 10 --seed 5 ran
    # seed 5 alone; --shrink without --seed shrank nothing).
    source = click.get_current_context().get_parameter_source
    if seed is not None and (seeds is not None
                             or source("first_seed") is not click.core.ParameterSource.DEFAULT):
        raise click.UsageError("--seed runs one seed; --seeds/--first-seed run a campaign of "
                               "many: choose one")
    if seed is None:
        alone = [name for name, given in (("--shrink", shrink), ("--trace", trace_key))
                 if given]
        if alone:
            raise click.UsageError(f"{', '.join(alone)}: only with --seed S (one seed); a "
                                   "campaign prints each failing seed's replay command")
    if scenario_file is not None:
        from loadtests.harness.scenario import ScenarioError, load_scenario

        require_utf8(scenario_file, "--scenario")
        try:
            load_scenario(scenario_file)  # one `Error:` line on stderr, as `scenario run`
        except ScenarioError as exc:
            raise UserError(f"invalid scenario: {exc}") from None
        sys.exit(run_scenario_file(scenario_file, out))
    duration = parse_duration(duration_text)
    at_once = 1 if seed is not None else min(seeds if seeds is not None else 10,
                                             processes or os.cpu_count() or 1)
    check_memory(duration_text, duration, rate, at_once, available_bytes())
    template = SimOptions(seed=0, duration_s=duration, rate=rate, intensity=intensity,
                          crashes=not no_crashes, disk=not no_crashes, trace_key=trace_key,
                          vary_config=vary_config)
    if seed is not None:
        quiet()
        template.seed = seed
        result = simulate_one(template)
        print_seed(result, template, out)
        if shrink and not result.violations:
            print(f"nothing to shrink: every invariant held on seed {seed}", file=out)
        if shrink and result.violations:
            invariant = result.violations[0].invariant
            print(f"shrinking the schedule while {invariant} still fails:", file=out)
            smaller = shrink_schedule(template, invariant, out)
            print(f"a schedule of {smaller.injected} (of {result.faults}) on which {invariant}"
                  " still fails:", file=out)
            for line in smaller.describe():
                print(f"  {line}", file=out)
        sys.exit(1 if result.violations else 0)
    count = seeds if seeds is not None else 10
    summary = run_campaign(range(first_seed, first_seed + count), template,
                           processes or os.cpu_count() or 1, out)
    print_summary(summary, out)
    sys.exit(1 if summary.failed else 0)


if __name__ == "__main__":
    simulate()
