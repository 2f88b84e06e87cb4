"""``payswitch --help`` and the commands that start no switch stay light.

Every payswitch command paid for the whole switch at start-up: the switch's configuration
(and through it the resolver, the journal, numpy) and httpx were imported by the CLI
module itself, so ``payswitch --help`` took a second. They are imported by the commands
that use them; this test fails when one comes back to module level.
"""

from __future__ import annotations

import subprocess
import sys

#: Modules only the commands that need them may import.
HEAVY = ("httpx", "numpy", "polars", "starlette", "switch.serve.config",
         "switch.payment.resolver", "switch.journal", "channels.faults")


def _imported_by(module: str) -> list[str]:
    probe = (f"import sys, {module}; "
             f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60)
    return out.stdout.split()


def test_the_cli_module_imports_no_part_of_the_switch_it_does_not_run() -> None:
    assert _imported_by("switch.cli.main") == []


def test_the_probe_sees_a_heavy_import() -> None:
    # The check above is only worth something if the probe can see one.
    assert "switch.serve.config" in _imported_by("switch.serve.config")
    assert "httpx" in _imported_by("httpx")
