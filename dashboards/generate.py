"""Write the Grafana dashboards (dashboards/grafana/*.json) from their Python definitions.

    python -m dashboards.generate            # rewrite the JSON files
    python -m dashboards.generate --check    # exit 1, naming each file that differs

The JSON stays checked in because Grafana's file provisioning
(dashboards/grafana/provisioning/dashboards.yml) reads it as it is; the --check mode (run
by tests/observability/test_dashboards.py) keeps it equal to what this module writes.
Output is deterministic: keys sorted, panel ids numbered in layout order, fixed uids.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from dashboards import channels, loadtest, overview, slo

GRAFANA = Path(__file__).resolve().parent / "grafana"

#: File stem → the function building that dashboard.
DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "channels": channels.build,
    "loadtest": loadtest.build,
    "overview": overview.build,
    "slo": slo.build,
}


def render(build: Callable[[], Dashboard]) -> str:
    """The dashboard as Grafana's JSON model, ready to write."""
    model = build().build()
    # Grafana needs a unique positive id per panel; numbering them in layout order keeps
    # them stable for as long as the layout is (the SDK leaves them unset).
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    # ensure_ascii=False keeps "×" and "→" in titles and units readable in review.
    text: str = JSONEncoder(sort_keys=True, indent=2, ensure_ascii=False).encode(model)
    return text + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.generate", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file differs"
    )
    parser.add_argument(
        "--dir", type=Path, default=GRAFANA, help="where the JSON files live (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    stale = []
    for stem, build in DASHBOARDS.items():
        path: Path = args.dir / f"{stem}.json"
        text = render(build)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(path)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    for path in stale:
        print(
            f"{path}: differs from dashboards/{path.stem}.py; regenerate: make dashboards",
            file=sys.stderr,
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
