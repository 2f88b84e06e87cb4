"""Who may import whom, held by a test.

The rules are written once, in ``LAYERS`` below; docs/ARCHITECTURE.md shows the same table
(``test_architecture_map_matches_the_rules`` keeps the two equal). Every import is read with
``ast`` -- including imports inside functions and under ``TYPE_CHECKING`` -- because a lazy
import that breaks a layer is still a dependency a newcomer has to understand.

A failure names the file, the line and the rule broken. Move the code, not the rule.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The layers, lowest first: each unit may import itself and the units listed. A unit is
#: a module or package prefix; the longest prefix that matches a module names its unit.
LAYERS: dict[str, tuple[str, ...]] = {
    "switch.base": (),
    "switch.protocols": ("switch.base",),
    "switch.observability": ("switch.base",),
    "switch.journal": ("switch.base",),
    "switch.adapters": ("switch.base", "switch.protocols"),
    "switch.routing": ("switch.base", "switch.adapters.base", "switch.observability"),
    "switch.payment": (
        "switch.base", "switch.protocols", "switch.journal", "switch.adapters",
        "switch.routing", "switch.observability",
    ),
    "switch.serve": (
        "switch.base", "switch.protocols", "switch.journal", "switch.adapters",
        "switch.routing", "switch.payment", "switch.observability",
    ),
    "switch.backoffice": ("switch.base", "switch.protocols", "switch.journal"),
    # The cluster's layout, worker supervisor and the files HAProxy and Prometheus read.
    "switch.cluster": ("switch.base", "switch.protocols", "switch.serve"),
    "channels": ("switch.base", "switch.protocols", "switch.serve.http"),
    "loadtests.harness": (
        "switch.base", "switch.protocols", "switch.journal", "switch.adapters",
        "switch.routing", "switch.payment", "switch.serve", "switch.backoffice",
        "switch.observability", "channels", "switch.cluster",
    ),
    # The simulator runs the real switch layers against the channels' models; of the
    # harness it takes the workload generator and the scenario files' parsing and verdicts.
    "switch.sim": (
        "switch.base", "switch.protocols", "switch.journal", "switch.adapters",
        "switch.routing", "switch.payment", "switch.serve", "switch.observability",
        "switch.backoffice", "channels", "loadtests.harness.workload",
        "loadtests.harness.scenario",
    ),
    "switch.cli": (
        "switch.base", "switch.protocols", "switch.journal", "switch.adapters",
        "switch.routing", "switch.payment", "switch.serve", "switch.backoffice",
        "switch.observability", "channels", "loadtests.harness", "switch.sim",
        "switch.cluster",
    ),
}

#: The leaves of ``switch``: plain modules every layer may use.
BASE_MODULES = (
    "switch", "switch.model", "switch.currency", "switch.reasons", "switch.clock",
    "switch.loopcalls", "switch.bounds", "switch.fielderrors", "switch.tomlio",
    "switch.dirlock",
)

#: Third-party imports a unit must never make, with the reason.
FORBIDDEN_THIRD_PARTY: dict[str, dict[str, str]] = {
    "switch.protocols": {
        "anyio": "codecs are sans-IO", "trio": "codecs are sans-IO",
        "asyncio": "codecs are sans-IO", "socket": "codecs are sans-IO",
    },
    # switch.clock reads anyio's clock: that is where time enters, and nothing else here.
    "switch.base": {"socket": "leaves are sans-IO"},
    "*": {"locust": "locust monkey-patches the process with gevent: own processes only"},
}

#: Only these modules may import numba (everything else would pay ~0.5 s to start).
NUMBA_MODULES = ("switch.routing.binkernels", "switch.backoffice.recon.kernels")

SOURCE_DIRS = ("switch", "channels", "loadtests/harness")


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def unit_of(module: str) -> str | None:
    """The layer a module belongs to, or None for a module outside the checked tree."""
    if module in BASE_MODULES:
        return "switch.base"
    best = None
    for unit in LAYERS:
        if (module == unit or module.startswith(unit + ".")) and (
            best is None or len(unit) > len(best)
        ):
            best = unit
    return best


def allowed(importer_unit: str, imported: str) -> bool:
    target_unit = unit_of(imported)
    if target_unit is None or target_unit == importer_unit:
        return True
    for face in LAYERS[importer_unit]:
        if face == target_unit:
            return True
        # A narrow face: a single module of another layer, e.g. switch.serve.http.
        if face not in LAYERS and (imported == face or imported.startswith(face + ".")):
            return True
    return False


def module_name(path: str) -> str:
    parts = Path(path).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: str, source: str) -> Iterable[tuple[int, str, bool]]:
    """(line, imported module, at module top level) for every import in a file."""
    tree = ast.parse(source, path)
    me = module_name(path)
    package = me if path.endswith("__init__.py") else me.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, id(node) in top_level
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            for alias in node.names:
                # `from switch.routing import binindex` imports a module, not a name.
                yield node.lineno, f"{stem}.{alias.name}", id(node) in top_level


def check(files: Mapping[str, str]) -> list[Violation]:
    """Every rule broken by ``files`` (path relative to the repo root → source)."""
    found: list[Violation] = []
    for path, source in sorted(files.items()):
        me = module_name(path)
        unit = unit_of(me)
        if unit is None:
            continue
        for line, imported, _ in imports_of(path, source):
            top = imported.split(".")[0]
            forbidden = {**FORBIDDEN_THIRD_PARTY.get(unit, {}), **FORBIDDEN_THIRD_PARTY["*"]}
            if top in forbidden:
                message = f"{unit} may not import {top}: {forbidden[top]}"
                found.append(Violation(path, line, message))
            if top == "numba" and me not in NUMBA_MODULES:
                found.append(Violation(
                    path, line, f"only {', '.join(NUMBA_MODULES)} may import numba",
                ))
            if top not in ("switch", "channels", "loadtests"):
                continue
            imported_module = _existing_module(imported)
            if not allowed(unit, imported_module):
                rule = ", ".join(LAYERS[unit]) or "nothing of ours"
                found.append(Violation(
                    path, line,
                    f"{unit} may not import {imported_module} "
                    f"({unit_of(imported_module)}); {unit} may import: {rule}",
                ))
    return found


def _existing_module(dotted: str, known: frozenset[str] = frozenset()) -> str:
    """Strip a trailing imported name (``switch.model.Payment`` → ``switch.model``)."""
    parts = dotted.split(".")
    while len(parts) > 1:
        if ".".join(parts) in known:
            return ".".join(parts)
        candidate = ROOT.joinpath(*parts)
        if candidate.with_suffix(".py").exists() or (candidate / "__init__.py").exists():
            return ".".join(parts)
        parts = parts[:-1]
    return dotted


def package_cycles(files: Mapping[str, str]) -> list[list[str]]:
    """Cycles in the graph of units (layers), from every import."""
    edges: dict[str, set[str]] = {}
    for path, source in files.items():
        unit = unit_of(module_name(path))
        if unit is None:
            continue
        for _, imported, _ in imports_of(path, source):
            target = unit_of(_existing_module(imported))
            if target is not None and target != unit:
                edges.setdefault(unit, set()).add(target)
    return _cycles(edges)


def module_cycles(files: Mapping[str, str]) -> list[list[str]]:
    """Cycles between modules, through any import: at top level, in a function, or for
    type checking only (each is a dependency a reader has to hold in their head)."""
    edges: dict[str, set[str]] = {}
    known = frozenset(module_name(p) for p in files)
    for path, source in files.items():
        me = module_name(path)
        for _, imported, _top_level in imports_of(path, source):
            target = _existing_module(imported, known)
            # A package's __init__ importing its own submodules is not a cycle.
            own_submodule = path.endswith("__init__.py") and target.startswith(me + ".")
            if target in known and target != me and not own_submodule:
                edges.setdefault(me, set()).add(target)
    return _cycles(edges)


def _cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """One representative cycle per strongly connected component (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return result


def project_files() -> dict[str, str]:
    files = {}
    for directory in SOURCE_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            files[str(path.relative_to(ROOT))] = path.read_text()
    return files


# --------------------------------------------------------------------------- the rules hold


def test_every_import_follows_the_layer_rules() -> None:
    violations = check(project_files())
    assert not violations, "layer rules broken:\n" + "\n".join(map(str, violations))


def test_no_import_cycle_between_packages() -> None:
    cycles = package_cycles(project_files())
    assert not cycles, f"import cycles between layers: {cycles}"


def test_no_import_cycle_between_modules() -> None:
    cycles = module_cycles(project_files())
    assert not cycles, f"import cycles between modules: {cycles}"


def test_every_checked_module_has_a_layer() -> None:
    orphans = [p for p in project_files() if unit_of(module_name(p)) is None]
    assert not orphans, f"modules outside every layer (add them to LAYERS): {orphans}"


# --------------------------------------------------------------------- the checker can fail


def test_checker_names_file_line_and_rule_for_a_forbidden_import() -> None:
    source = "import msgspec\n\ndef f():\n    from switch.observability import metrics\n"
    violations = check({"switch/journal/bad.py": source})
    assert [str(v) for v in violations] == [
        "switch/journal/bad.py:4: switch.journal may not import switch.observability.metrics "
        "(switch.observability); switch.journal may import: switch.base"
    ]


def test_checker_catches_sans_io_numba_and_locust_breaks() -> None:
    bad = {
        "switch/protocols/bad.py": "import anyio\n",
        "switch/routing/bad.py": "from numba import njit\n",
        "loadtests/harness/bad.py": "import locust\n",
        "channels/bad.py": "from switch.adapters.qr import QrAdapter\n",
    }
    messages = sorted(str(v) for v in check(bad))
    assert len(messages) == 4, messages
    assert "channels/bad.py:1: channels may not import switch.adapters.qr" in messages[0]
    assert "may not import locust" in messages[1]
    assert "may not import anyio: codecs are sans-IO" in messages[2]
    assert "only switch.routing.binkernels" in messages[3]


def test_narrow_faces_admit_only_the_named_module() -> None:
    assert not check({"channels/ok.py": "from switch.serve.http import bind_socket\n"})
    assert check({"channels/bad.py": "from switch.serve.app import SwitchApp\n"})
    assert not check({"switch/routing/ok.py": "from switch.adapters.base import NotSent\n"})
    assert check({"switch/routing/bad.py": "from switch.adapters.iso8583 import CardAdapter\n"})


def test_cycle_finder_finds_a_planted_cycle() -> None:
    files = {
        "switch/payment/a.py": "from switch.payment import b\n",
        "switch/payment/b.py": "import switch.payment.a\n",
        "switch/payment/c.py": "def f():\n    from switch.payment import a\n",
    }
    assert module_cycles(files) == [["switch.payment.a", "switch.payment.b"]]
    assert package_cycles({
        "switch/journal/x.py": "from switch.payment import pipeline\n",
        "switch/payment/pipeline.py": "from switch.journal import Journal\n",
    }) == [["switch.journal", "switch.payment"]]


# ------------------------------------------------------------------ the docs show the rules


def rules_table() -> str:
    rows = ["| layer | may import |", "|---|---|"]
    for unit, faces in LAYERS.items():
        rows.append(f"| `{unit}` | {', '.join(f'`{f}`' for f in faces) or 'nothing of ours'} |")
    return "\n".join(rows)


def test_architecture_map_matches_the_rules() -> None:
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    table = rules_table()
    assert table in doc, (
        "docs/ARCHITECTURE.md's layer table differs from tests/test_layers.py LAYERS; "
        "paste this table under 'Who may import whom':\n" + table
    )


def test_architecture_map_names_every_module() -> None:
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    missing = [
        p for p in project_files()
        if not p.endswith("__init__.py") and not p.endswith("__main__.py") and f"`{p}`" not in doc
    ]
    assert not missing, f"docs/ARCHITECTURE.md does not name: {missing}"


# ------------------------------------------------------------- cheap subcommands stay cheap


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", "import switch.cli, switch.cli.main"],
        ["-m", "switch.cli", "--help"],
        ["-m", "switch.cli", "fault", "--help"],
        ["-m", "switch.cli", "top", "--help"],
    ],
)
def test_cheap_commands_do_not_load_numba(argv: list[str]) -> None:
    probe = (
        "import runpy, sys, atexit\n"
        "atexit.register(lambda: print('LOADED', 'numba' in sys.modules, "
        "'llvmlite' in sys.modules, file=sys.stderr))\n"
    )
    if argv[0] == "-c":
        code = probe + argv[1]
    else:
        code = probe + (
            f"sys.argv = ['payswitch', *{argv[2:]!r}]\n"
            f"runpy.run_module({argv[1]!r}, run_name='__main__')"
        )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert "LOADED False False" in result.stderr, result.stderr[-2000:]


def test_serve_loads_no_settlement_file_library() -> None:
    # `payswitch serve` checks its ports with channels.__main__.port_free; importing that
    # once pulled the simulators' server, and with it polars, pyarrow and lxml (the
    # settlement files): +56 MB of RSS in every switch process and cluster worker.
    code = (
        "import sys\n"
        "import switch.serve.app, switch.cli.main\n"
        "from channels.__main__ import address_in_use, port_free\n"
        "print(sorted(m for m in ('polars', 'pyarrow', 'lxml') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr[-2000:]
