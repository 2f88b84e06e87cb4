"""The file-format reference (docs/reference/*.md), generated from the msgspec Structs.

Every file a user writes is decoded into msgspec Structs that forbid unknown keys; those
Structs (their fields, types, bounds and defaults, their docstrings and ``#:`` field
comments) are the truth, so the reference is rendered from them and cannot drift. Each
page adds what the types cannot say (how the file is used, where paths resolve) and
embeds complete examples; tests/test_reference.py loads every ``toml`` block of every
page with that format's own loader.

    python -m switch.cli.reference            # regenerate docs/reference/
    python -m switch.cli.reference --check    # exit 1 naming each stale page
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
import msgspec.inspect as mi

ROOT: Final = Path(__file__).resolve().parents[2]
OUT_DIR: Final = ROOT / "docs" / "reference"


@dataclass(frozen=True)
class Format:
    """One user-written file format and its page."""

    slug: str  # docs/reference/<slug>.md
    title: str
    root: Any  # the Struct the whole file decodes into
    intro: str  # Markdown: what the file is for and how it is used
    examples: tuple[str, ...]  # files under ROOT, embedded whole (each must load)
    notes: str = ""  # Markdown after the keys: what the types cannot say
    #: (Struct, field) -> the type to document where the Struct keeps a field loosely
    #: typed (converted later, one entry at a time, for better error paths).
    overrides: tuple[tuple[Any, str, Any], ...] = ()


# --------------------------------------------------------------------------- comments


_FIELD_LINE: Final = re.compile(r"^\s+(\w+)\s*:")


def field_comments(cls: type) -> dict[str, str]:
    """The ``#:`` comment lines right above each field of ``cls`` (and its bases)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, msgspec.Struct)) or (
                klass is msgspec.Struct):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        pending: list[str] = []
        for line in source.splitlines()[1:]:
            stripped = line.strip()
            if stripped.startswith("#:"):
                pending.append(stripped[2:].strip())
                continue
            match = _FIELD_LINE.match(line)
            if match and pending:
                out[match.group(1)] = " ".join(pending)
            pending = []
    return out


def docstring(cls: type) -> str:
    """The class's own docstring (not an inherited one), dedented."""
    doc = cls.__dict__.get("__doc__")
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


# --------------------------------------------------------------------------- types


def _bounds(t: Any) -> str:
    parts = []
    for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
        value = getattr(t, attr, None)
        if value is not None:
            whole = isinstance(value, int) or float(value).is_integer()
            parts.append(f"{sign} {int(value):,}" if whole else f"{sign} {value:g}")
    return ", ".join(parts)


def _lengths(t: Any, unit: str) -> str:
    lo, hi = getattr(t, "min_length", None), getattr(t, "max_length", None)
    if lo is None and hi is None:
        return ""
    if lo is not None and hi is not None:
        return f"{lo}–{hi} {unit}" if lo != hi else f"exactly {lo} {unit}"
    return f"at least {lo} {unit}" if lo is not None else f"at most {hi} {unit}"


def toml_value(value: Any) -> str:
    """A default as TOML would spell it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (int, float)):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return str(value)


@dataclass
class Section:
    """One table (or array of tables) of the file, documented once."""

    header: str  # e.g. "[[networks]]"
    anchor: str
    struct: mi.StructType
    note: str = ""  # e.g. 'kind = "card"'


class Renderer:
    def __init__(self, fmt: Format) -> None:
        self.fmt = fmt
        self.sections: list[Section] = []
        self.by_class: dict[type, Section] = {}
        self.overrides = {(cls, name): mi.type_info(t) for cls, name, t in fmt.overrides}

    # Sections are discovered breadth-first from the root, each class documented once.
    def discover(self) -> None:
        root = mi.type_info(self.fmt.root)
        assert isinstance(root, mi.StructType)
        queue: list[tuple[str, str, mi.StructType, str]] = [("", "top level", root, "")]
        while queue:
            path, header, struct, note = queue.pop(0)
            if struct.cls in self.by_class:
                continue
            section = Section(header, _anchor(header, note), struct, note)
            self.sections.append(section)
            self.by_class[struct.cls] = section
            for f in struct.fields:
                t = self.overrides.get((struct.cls, f.encode_name), f.type)
                key = f"{path}.{f.encode_name}" if path else f.encode_name
                for child, child_header, child_note in _children(t, key):
                    queue.append((child[0], child_header, child[1], child_note))

    def type_text(self, t: Any) -> str:
        if isinstance(t, mi.UnionType):
            members = [m for m in t.types if not isinstance(m, mi.NoneType)]
            text = " or ".join(self.type_text(m) for m in members)
            return text + (" (optional)" if len(members) < len(t.types) else "")
        if isinstance(t, mi.BoolType):
            return "boolean"
        if isinstance(t, mi.IntType):
            b = _bounds(t)
            return "integer" + (f" ({b})" if b else "")
        if isinstance(t, mi.FloatType):
            b = _bounds(t)
            return "number" + (f" ({b})" if b else "")
        if isinstance(t, mi.StrType):
            extra = [x for x in (_lengths(t, "characters"),
                                 f"pattern `{t.pattern}`" if t.pattern else "") if x]
            return "string" + (f" ({'; '.join(extra)})" if extra else "")
        if isinstance(t, mi.LiteralType):
            return " \\| ".join(f"`{toml_value(v)}`" for v in t.values)
        if isinstance(t, (mi.ListType, mi.VarTupleType, mi.SetType, mi.FrozenSetType)):
            n = _lengths(t, "items")
            item = self.type_text(t.item_type)
            if item.startswith("table "):
                return "tables " + item.replace("table [", "[") + (f" ({n})" if n else "")
            return f"list of {item}" + (f" ({n})" if n else "")
        if isinstance(t, mi.DictType):
            n = _lengths(t, "entries")
            return (f"table of {self.type_text(t.key_type)} → {self.type_text(t.value_type)}"
                    + (f" ({n})" if n else ""))
        if isinstance(t, mi.StructType):
            section = self.by_class.get(t.cls)
            if section is None:
                return "table"
            label = section.header + (f" {section.note}" if section.note else "")
            return f"table [`{label}`](#{section.anchor})"
        if isinstance(t, mi.AnyType):
            return "any"
        return type(t).__name__.removesuffix("Type").lower()

    def default_text(self, f: mi.Field) -> str:
        if f.required:
            return "**required**"
        value = f.default if f.default is not msgspec.NODEFAULT else f.default_factory()
        built = msgspec.to_builtins(value)
        if value is None:
            return "none"
        if isinstance(built, dict) and isinstance(value, msgspec.Struct):
            return "(its defaults)"
        text = toml_value(built)
        return f"`{text}`" if len(text) <= 60 else "(see the example)"

    def render(self) -> str:
        self.discover()
        fmt = self.fmt
        out = [
            f"# {fmt.title}",
            "",
            "<!-- Generated by `python -m switch.cli.reference` from the msgspec Structs and "
            "their docstrings; edit those (or switch/cli/reference.py), then `make docs`. "
            "tests/test_reference.py fails when this page is stale and loads every toml "
            "block below. -->",
            "",
            fmt.intro.strip(),
            "",
            "Every key is checked when the file is read: an unknown key, a wrong type or an "
            "out-of-range value is refused with its key path, e.g. "
            "`networks[3].kind: Invalid enum value 'qrr' (expected one of: ...)`.",
            "",
            "## Keys",
            "",
        ]
        for section in self.sections:
            out += [f'<a id="{section.anchor}"></a>', ""]
            title = section.header + (f" {section.note}" if section.note else "")
            out += [f"### `{title}`", ""]
            doc = docstring(section.struct.cls)
            if doc:
                out += [doc, ""]
            comments = field_comments(section.struct.cls)
            rows = []
            for f in section.struct.fields:
                if section.note.startswith("kind =") and f.encode_name == "kind":
                    continue
                t = self.overrides.get((section.struct.cls, f.encode_name), f.type)
                rows.append("| " + " | ".join([
                    f"`{f.encode_name}`",
                    _cell(self.type_text(t)),
                    _cell(self.default_text(f)),
                    _cell(comments.get(f.name) or _summary(t)),
                ]) + " |")
            tag = section.struct.tag_field
            if tag and section.struct.tag is not None:
                rows.insert(0, f"| `{tag}` | `{toml_value(section.struct.tag)}` | **required** "
                               "| selects this kind |")
            if rows:
                out += ["| key | type | default | meaning |", "|---|---|---|---|", *rows, ""]
            else:
                out += ["No keys of its own.", ""]
        if fmt.notes.strip():
            out += [fmt.notes.strip(), ""]
        for example in fmt.examples:
            text = (ROOT / example).read_text()
            out += [f"## Example: `{example}`", "", "```toml", text.rstrip(), "```", ""]
        return "\n".join(out).rstrip() + "\n"


def _summary(t: Any) -> str:
    """A table-valued key's meaning: the first sentence of its Struct's docstring."""
    while isinstance(t, (mi.ListType, mi.VarTupleType, mi.DictType, mi.UnionType)):
        if isinstance(t, mi.UnionType):
            members = [m for m in t.types if not isinstance(m, mi.NoneType)]
            if len(members) != 1:
                return ""
            t = members[0]
        else:
            t = t.value_type if isinstance(t, mi.DictType) else t.item_type
    if not isinstance(t, mi.StructType):
        return ""
    doc = docstring(t.cls).replace("\n", " ")
    return doc.split(". ")[0].rstrip(".") + "." if doc else ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") if "\\|" not in text else text


def _anchor(header: str, note: str) -> str:
    text = (header + " " + note).lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "top-level"


def _children(t: Any, key: str) -> list[tuple[tuple[str, mi.StructType], str, str]]:
    """The struct sections reachable through one field: (path, struct), header, note."""
    found: list[tuple[tuple[str, mi.StructType], str, str]] = []
    if isinstance(t, mi.UnionType):
        for member in t.types:
            found += _children(member, key)
        return found
    if isinstance(t, mi.StructType):
        note = f"kind = {toml_value(t.tag)}" if t.tag_field and t.tag is not None else ""
        found.append(((key, t), f"[{key}]", note))
    elif isinstance(t, (mi.ListType, mi.VarTupleType)):
        item = t.item_type
        members = item.types if isinstance(item, mi.UnionType) else (item,)
        for member in members:
            if isinstance(member, mi.StructType):
                note = (f"kind = {toml_value(member.tag)}"
                        if member.tag_field and member.tag is not None else "")
                found.append(((key, member), f"[[{key}]]", note))
    elif isinstance(t, mi.DictType):
        found += [((f"{key}.NAME", s), h.replace(f"[{key}]", f"[{key}.NAME]"), n)
                  for (_, s), h, n in _children(t.value_type, key)]
    return found


# --------------------------------------------------------------------------- formats


def formats() -> list[Format]:
    """The formats, imported here so `payswitch --help` never pays for them."""
    from channels.config import ChannelsConfig
    from channels.faults import Fault
    from loadtests.harness.loadgen import RateShape
    from loadtests.harness.scenario import LoadSection, Scenario
    from loadtests.harness.workload import WorkloadSpec
    from switch.routing.tablespec import TargetSpec, _TableShape
    from switch.serve.config import SwitchConfig

    return [
        Format(
            "switch-config", "Switch configuration (`payswitch serve --config FILE`)",
            SwitchConfig,
            """
The switch's one configuration file (TOML). Every key is optional: with no file at all,
`payswitch serve` runs on 127.0.0.1:7100 (admin 7180) with one in-process stand-in network
per channel.

Networks come in two kinds:

- `[[networks]]`: in-process stand-in networks (no sockets), for trying the switch alone.
- `[[channel_networks]]`: the simulated networks over TCP, as run by
  `payswitch channels serve --config examples/channels.toml`. Each entry names one
  simulator endpoint: its `kind` (`card`, `swift` or `qr`), the `name` routes and faults
  use, and the `host`/`port` it listens on (the `port` of the same-named `[[networks]]`
  entry in the channels config). `examples/switch-sim.toml` is the pair of
  `examples/channels.toml`:

      payswitch channels serve --config examples/channels.toml &
      payswitch serve --config examples/switch-sim.toml

Payments find a network either through `[[routes]]` (one network per channel) or through a
route table file (`[routing] table = "examples/routes.toml"`, see [routes](routes.md)),
which adds BIN ranges, corridors, failover order and strategies.

Relative paths (`journal.path`, `routing.table`) resolve against the directory `serve`
runs in, not the config file's directory: run it from the repository root, or write
absolute paths.
""",
            ("examples/switch.toml", "examples/switch-sim.toml"),
        ),
        Format(
            "channels-config",
            "Simulated networks (`payswitch channels serve --config FILE`)",
            ChannelsConfig,
            """
The simulators' configuration (TOML): card networks (ISO 8583) backed by card schemes and
their issuers, a SWIFT-style network (pacs.008/002/028) with correspondent banks, a QR
scheme (EMVCo), their latency/capacity/error behaviour, scheduled faults, and the
settlement files they write at each cut-off.

Each `[[networks]]` entry listens on its own `port` (0 picks a free one; `--ready-file`
then says which). To send the switch's payments there, name the same endpoints in the
switch config's `[[channel_networks]]` (see [switch-config](switch-config.md)).
`payswitch fault ENDPOINT KIND` and a fault's `endpoint` use the network's `name`.

`settlement.out_dir` is relative to the directory `channels serve` runs in.
""",
            ("examples/channels.toml",),
            notes=FAULT_NOTES,
        ),
        Format(
            "routes", "Route table (`[routing] table = FILE` in the switch config)",
            _TableShape,
            """
Where each payment goes: named targets (an ordered list of network endpoints with a
strategy and a per-attempt timeout), and per channel the rules that pick a target. The
switch re-reads the file when it changes (every `routing.reload_check_s`) or on
`POST /routes/reload`; a table that fails any check is refused whole, naming every problem,
and the old one stays.

Endpoint names are the switch's network names (`[[channel_networks]]` or `[[networks]]`).
Card rules match the card number's BIN: `ranges` with `low`/`high` or a `prefix`, 6 to 11
digits (a low bound is padded with 0s, a high bound with 9s); ranges may not overlap; no
match: `default`. A payment keeps the first 8 digits of a card number of 16 or more (6 of
a shorter one), so a bound may not split cards that share their first 8 (digits 9-11: 0s
in a low bound, 9s in a high one). A shorter card (15 digits, say) is keyed on its 6,
padded with 0s: where ranges split its 6-digit BIN, it takes the range holding `BIN00`.
SWIFT rules try `by_bic` (creditor agent: 11 characters exact, then its first 8), then
`by_corridor` (debtor country → creditor country, the BICs' letters 5–6, e.g. `{
debtor_country = "DE", creditor_country = "FR", target = "eu" }`), then `by_currency`,
then `default`. QR rules try `by_acquirer` (when
the caller names one), then `by_scheme` (the merchant template's globally unique id),
then `default`.

A target's `strategy` is a name (`"priority"`, `"least_latency"`, `"success_rate"`,
`"sticky"`) or a table with `kind` and that strategy's keys (below); `weighted` needs its
table, for the weights.
""",
            ("examples/routes.toml",),
            overrides=((_TableShape, "targets", dict[str, TargetSpec]),),
        ),
        Format(
            "scenario", "Scenario (`payswitch scenario run FILE`)", Scenario,
            """
A scripted outage with a verdict: a load (a fixed `rate` or a `shape`), faults on a
timeline, and assertions. `payswitch scenario run FILE` starts the simulators (`channels`)
and a switch routed by `routes`, runs the load, injects each fault at its `start_s`
(seconds from the start of the load), then prints the verdict table and exits 0 only if
every assertion passed (1 if one failed, 2 if the file is invalid: nothing starts then).
`payswitch demo --scenario NAME` runs `loadtests/scenarios/NAME.toml`; there `--duration`
and `--rate` override `duration_s` and the load (checked as if the file said so).

Relative paths (`channels`, `routes`, `load.workload`) resolve against the repository
root, wherever the command runs.
""",
            ("loadtests/scenarios/card-primary-outage.toml",
             "loadtests/scenarios/swift-blackhole.toml"),
            notes=FAULT_NOTES + SCENARIO_NOTES,
            overrides=((Scenario, "faults", list[Fault]), (LoadSection, "shape", RateShape)),
        ),
        Format(
            "workload", "Workload (`payswitch load --workload FILE`)", WorkloadSpec,
            """
The synthetic payments a load sends: the channel mix, amounts per channel and currency,
hot (Zipf-skewed) cards, accounts and merchants, SWIFT corridors, and the shares of
duplicates, malformed frames, invalid payments and payments that break risk rules. Read by
`payswitch load --workload FILE`, by scenarios (`load.workload`) and by the Locust files
(`PAYSWITCH_WORKLOAD=FILE`). Keys left out take the built-in model's values
(`loadtests/workloads/default.toml` writes them all out). Same seed, same payments.
""",
            ("loadtests/workloads/card-heavy.toml",),
        ),
    ]


FAULT_NOTES: Final = """
## Faults

A fault (`[[faults]]` in a scenario, `[[networks.faults]]` in the channels config, or
`payswitch fault ENDPOINT KIND` at runtime) applies to one `endpoint` (a network's `name`)
from `start_s` for `duration_s` (none: until cleared). What each `kind` needs:

| kind | effect | needs |
|---|---|---|
| `down` | connections refused | |
| `blackhole` | connections accepted, requests never answered | |
| `slow` | latency multiplied | `factor` |
| `error_burst` | a share of requests answered with a technical error | `rate` |
| `flapping` | down and up in turn, each half of `period_s` (`start_down` optional) | `period_s` |
| `partial` | the matched route keys are unavailable behind a live endpoint | `match` |
| `reset` | a share of connections reset mid-flight | `rate` |
| `malformed` | a share of responses are malformed bytes | `rate` |
| `duplicate` | a share of responses are sent twice | `rate` |
| `late` | a share of responses delayed by an extra `delay_s` | `rate`, `delay_s` |

A parameter the kind does not use is refused, not ignored. `match` is a **list** of
route-key prefixes (`match = ["41"]`, not `match = "41"`); without it the fault covers the
whole endpoint. Route keys: a card network's is the card number (so a prefix is a BIN
range); SWIFT's is the corridor then the creditor agent, `DE-FR:BNPAFRPP` (country codes
are the BICs' letters 5–6), so `match = ["DE-FR"]` scopes a fault to one corridor; the QR
scheme's is the merchant id (`M0000042`). Two contradictory faults (`down`, `blackhole`,
`flapping`, `partial`) overlapping on one endpoint and match are refused.

Durations are in seconds in files (`period_s = 4`); the `payswitch fault` command takes
`--for 10s`, `--period 4s`, `--delay 3s` with units (`ms`, `s`, `m`, `h`).
"""

SCENARIO_NOTES: Final = """
## Assertions

Each key of `[assertions]` (listed above, with what passes) adds one row to the verdict
table. Keys left out are not checked, except `lost_max`, `duplicates_max`,
`unresolved_max`, `retries_within_budget` and `reconciliation_clean`, whose defaults
always apply. A row
"switch stopped cleanly" (exit 0) is always added, and with faults, a row "faults
injected" (every fault reached the simulators in time; `payswitch scenario run` only).
Nothing measured is a failure, never a pass: `lost` fails when the journal holds no
payment or acknowledgements are missing.

## Load shapes

`[load.shape]` (with its `kind`) instead of `load.rate`: the `[load.shape] kind = ...`
sections above list each shape's keys. `payswitch load --shape` takes the same shapes.
The rate is the whole run's, split over `load.processes`.
"""


# --------------------------------------------------------------------------- loaders


def loaders() -> dict[str, Callable[[str], object]]:
    """Each format's own loader, from a complete TOML text: what the tests run on every
    toml block of its page (a block that does not load fails them)."""
    import tempfile

    from channels.config import parse_config as parse_channels
    from loadtests.harness.scenario import load_scenario
    from loadtests.harness.workload import parse_workload
    from switch.routing.table import load_route_table
    from switch.serve.config import parse_config as parse_switch

    def routes(text: str) -> object:
        import tomllib

        names = [n["name"] for n in
                 tomllib.loads((ROOT / "examples" / "channels.toml").read_text())["networks"]]
        return load_route_table(text, names)

    def scenario(text: str) -> object:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "scenario.toml"
            path.write_text(text)
            return load_scenario(path)

    return {
        "switch-config": lambda text: parse_switch(text, "<reference>"),
        "channels-config": parse_channels,
        "routes": routes,
        "scenario": scenario,
        "workload": parse_workload,
    }


def render_all() -> dict[Path, str]:
    out_dir = OUT_DIR
    pages = {out_dir / f"{fmt.slug}.md": Renderer(fmt).render() for fmt in formats()}
    index = ["# File formats", "",
             "<!-- Generated by `python -m switch.cli.reference`; `make docs` rewrites it. -->",
             "", "Every file a user writes, one page each, generated from the code that reads "
             "it:", ""]
    for fmt in formats():
        index.append(f"- [{fmt.title}]({fmt.slug}.md)")
    pages[out_dir / "README.md"] = "\n".join(index) + "\n"
    return pages


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 naming each page that is stale")
    args = parser.parse_args(argv)
    pages = render_all()
    if args.check:
        stale = [p for p, text in pages.items()
                 if not p.exists() or p.read_text() != text]
        for path in stale:
            print(f"{_shown(path)}: stale; run `make docs`", file=sys.stderr)
        return 1 if stale else 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for path, text in pages.items():
        path.write_text(text)
        print(f"wrote {_shown(path)}")
    return 0


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


if __name__ == "__main__":
    sys.exit(main())
