"""`payswitch reconcile` end to end, from files on disk, vs polars and DuckDB doing the same.

Usage (from the repo root)::

    .venv/bin/python bench/recon/bench_reconcile_e2e.py --records 1000000 [--write]

1. Generates (seeded, cached under ``--dir``) a journal and settlement files of N
   payments with planted breaks of every class (bench/recon/synth.py: card clearing files,
   QR CSVs, camt.053 statements).
2. Runs ``payswitch reconcile`` as a user would: a subprocess of the installed entry
   point, from the files on disk to breaks.csv + summary.json + summary.html. Reports its
   wall time, CPU, peak RSS (the child's ru_maxrss), and the per-phase figures the
   command itself writes to summary.json (wall, CPU, records/s, peak RSS so far).
3. Checks the planted breaks against breaks.csv: every one found in its class, none
   explained away, nothing extra.
4. Runs the same job with polars and with DuckDB, each in its own subprocess from the
   same files: read the settlement files (their own CSV readers; camt.053, which neither
   reads, through our streaming reader), read the journal's column chunks (the journal's
   storage format: np.frombuffer of its blobs, then the engine folds outcomes onto
   intents itself), hash the files' references with the journal's key function (the
   stored keys are xxh64; neither engine has that hash, so both call our kernel, and the
   time counts for them), then the exact pass and break classes (duplicates, mismatches,
   missing both sides, expected absent, orphan reversals, late), and write breaks.csv.
   They skip the tolerance pass, netting and the HTML summary, so their figures are a
   lower bound on what the same job would cost them.

``--write`` puts the figures in bench/RESULTS.md (section ``recon-e2e``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.results import markdown_table, write_section  # noqa: E402

EXPLAINED = {"standin_exposure", "late_settlement"}
TOL_AMOUNT = 10


def _payswitch() -> str:
    exe = Path(sys.executable).parent / "payswitch"
    return str(exe) if exe.exists() else "payswitch"


def _child(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one child to completion; wall, CPU and peak RSS of that child alone."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()  # bench: wall of the whole command
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        # Largest of any child so far, and inherited through fork: the children report
        # their own VmHWM, which is what the tables show.
        "children_max_rss_mb": after.ru_maxrss / 1024,
    }


def generate(root: Path, n: int, seed: int) -> tuple[Path, Path, dict[str, Any]]:
    """Cached under ``root``. Run in a child process by :func:`main` so this (parent)
    process stays small: a child's ru_maxrss starts at its parent's size at fork."""
    marker = root / "planted.json"
    journal, files = root / "journal.db", root / "files"
    if marker.exists() and json.loads(marker.read_text()).get("seed") == seed:
        return journal, files, json.loads(marker.read_text())
    from bench.recon.synth import build

    t0 = time.perf_counter()  # bench: generation time, reported apart
    journal, files, planted = build(root, n, seed=seed)
    data = json.loads(planted.to_json())
    data.update(seed=seed, generate_s=round(time.perf_counter() - t0, 1),
                standin={k: sorted(v) for k, v in planted.standin.items()})
    marker.write_text(json.dumps(data))
    return journal, files, data


def check_breaks(out: Path, planted: dict[str, Any]) -> dict[str, Any]:
    rows = list(csv.DictReader((out / "breaks.csv").open()))
    found = {(r["class"], r["reference"]) for r in rows}
    expected = {tuple(b) for b in planted["breaks"]}
    by_class: dict[str, list[int]] = {}
    for kind, ref in expected:
        by_class.setdefault(kind, [0, 0])[0] += 1
        by_class[kind][1] += (kind, ref) in found
    explained_away = [
        (k, r) for k, r in expected
        if k not in EXPLAINED and any((e, r) in found for e in EXPLAINED)
    ]
    standin_missing = set(planted["standin"]["delivered_missing"])
    return {
        "planted": len(expected), "found": len(expected & found),
        "missed": sorted(expected - found)[:10], "extra": sorted(found - expected)[:10],
        "n_extra": len(found - expected), "by_class": by_class,
        "explained_away": explained_away[:10],
        "standin_missing_found": sum(("missing_at_network", r) in found
                                     for r in standin_missing),
        "standin_missing": len(standin_missing),
    }


# ------------------------------------------------------------------- the competitors


def _competitor_inputs() -> tuple[Any, ...]:
    import numpy as np

    return (np,)


def _read_network_polars(files: Path) -> Any:
    """Settlement files -> one polars frame (ref, amount, currency, status, time, channel)."""
    import numpy as np
    import polars as pl
    import pyarrow as pa

    from switch.backoffice.recon.kernels import hash_utf8_column
    from switch.currency import CURRENCIES
    from switch.protocols.settlement_files import read_camt053_columns

    numeric = {a: n for a, (n, _) in CURRENCIES.items()}
    frames = []
    for path in sorted(files.iterdir()):
        if path.suffix == ".clr":
            lines = path.read_bytes().count(b"\n")
            df = pl.read_csv(path, has_header=False, skip_rows=1, n_rows=lines - 2,
                             new_columns=["t", "ref", "sec", "amount", "cur", "st", "time"],
                             schema_overrides={"ref": pl.String, "sec": pl.String,
                                               "amount": pl.Int64, "cur": pl.Int64,
                                               "st": pl.String, "time": pl.Int64})
            df = df.select("ref", "amount", pl.col("cur").alias("currency"), "st", "time",
                           pl.lit(1).alias("channel"))
        elif path.suffix == ".csv":
            df = pl.read_csv(path, schema_overrides={"qr_reference": pl.String,
                                                     "merchant_id": pl.String,
                                                     "amount": pl.Int64,
                                                     "settled_at_us": pl.Int64})
            df = df.select(pl.col("qr_reference").alias("ref"), "amount",
                           pl.col("currency").replace_strict(numeric, return_dtype=pl.Int64),
                           pl.col("status").alias("st"), pl.col("settled_at_us").alias("time"),
                           pl.lit(3).alias("channel"))
        elif path.suffix == ".xml":
            c = read_camt053_columns(path.read_bytes(), str(path))
            df = pl.DataFrame({"ref": pl.from_arrow(c.reference), "amount": c.amount,
                               "currency": c.currency.astype(np.int64),
                               "st": np.where(c.status == 0, "settled", "reversed"),
                               "time": c.time_us, "channel": np.full(len(c), 2)})
        else:
            continue
        frames.append(df)
    net = pl.concat(frames, how="vertical_relaxed")
    # The journal's key: xxh64 of the reference, seeded by the channel (our kernel).
    keys = np.empty(net.height, np.int64)
    for ch in (1, 2, 3):
        idx = np.flatnonzero(net["channel"].to_numpy() == ch)
        if not len(idx):
            continue
        arr = pa.array(net["ref"].gather(idx).to_arrow()).cast(pa.large_string())
        offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset:arr.offset + len(arr) + 1]
        keys[idx] = hash_utf8_column(np.frombuffer(arr.buffers()[2], np.uint8), offsets, ch)
    return net.with_columns(pl.Series("key", keys),
                            pl.when(pl.col("st") == "settled").then(0).otherwise(3)
                            .alias("status"))


def _read_journal_arrays(journal: Path) -> tuple[Any, Any]:
    import sqlite3

    from switch.backoffice.recon.kernels import huge_pages
    from switch.journal.columns import read_columns

    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    # The same read as payswitch reconcile's (fields, no huge pages): the journal's
    # storage format is shared; the engines compete on the match.
    with huge_pages(False):
        cols = read_columns(db, ("seq", "pid", "ref", "amount", "time_us", "currency",
                                 "channel"))
    return cols.intents, cols.outcomes


def competitor_polars(journal: Path, files: Path, out: Path) -> dict[str, float]:
    import polars as pl

    phases: dict[str, float] = {}
    t = time.perf_counter()  # bench: phase figures
    net = _read_network_polars(files)
    phases["read files"] = time.perf_counter() - t
    t = time.perf_counter()
    intents, outcomes = _read_journal_arrays(journal)
    it = pl.DataFrame({k: intents[k] for k in ("pid", "ref", "amount", "time_us", "currency",
                                               "seq")})
    oc = pl.DataFrame({k: outcomes[k] for k in ("pid", "time_us", "status", "kind", "flags")})
    last = (oc.filter(pl.col("kind") <= 2).group_by("pid").agg(
        pl.col("status").last(), pl.col("time_us").last().alias("t_final")))
    sw = (it.unique("pid", keep="first", maintain_order=True)
          .join(last, on="pid", how="left")
          .with_columns(pl.col("status").fill_null(4),
                        pl.coalesce("t_final", "time_us").alias("time"))
          .select(pl.col("ref").alias("key"), "amount", "currency", "status", "time", "seq"))
    phases["read journal"] = time.perf_counter() - t
    t = time.perf_counter()
    sw = sw.with_columns(pl.col("key").is_first_distinct().alias("first"))
    net = net.with_columns(pl.col("key").is_first_distinct().alias("first"))
    a = sw.filter("first").drop("first")
    b = net.filter("first").select("key", "amount", "currency", "status", "time", "ref")
    j = a.join(b, on="key", how="full", suffix="_n", coalesce=False)
    late = 86_400_000_000
    kind = (
        pl.when(pl.col("key").is_null()).then(
            pl.when(pl.col("status_n") == 3).then(pl.lit("orphan_reversal"))
            .otherwise(pl.lit("missing_in_switch")))
        .when(pl.col("key_n").is_null()).then(
            pl.when(pl.col("status") != 0).then(pl.lit("expected_absent"))
            .otherwise(pl.lit("missing_at_network")))
        .when(pl.col("currency") != pl.col("currency_n")).then(pl.lit("currency_mismatch"))
        .when(pl.col("amount") != pl.col("amount_n")).then(pl.lit("amount_mismatch"))
        .when(pl.col("status") != pl.col("status_n")).then(pl.lit("status_mismatch"))
        .when(pl.col("time_n") - pl.col("time") > late).then(pl.lit("late_settlement"))
        .otherwise(pl.lit("matched"))
    )
    j = j.with_columns(kind.alias("class"))
    dups = net.filter(~pl.col("first")).select(pl.lit("duplicate").alias("class"), "key",
                                                "amount", "ref")
    breaks = pl.concat([
        j.filter(~pl.col("class").is_in(["matched", "expected_absent"])).select(
            "class", pl.coalesce("key", "key_n").alias("key"),
            pl.coalesce("amount", "amount_n").alias("amount"), "ref"),
        dups], how="vertical_relaxed")
    counts = breaks.group_by("class").len()
    phases["match"] = time.perf_counter() - t
    t = time.perf_counter()
    breaks.sort(["class", "amount"], descending=[False, True]).write_csv(out / "breaks.csv")
    phases["write"] = time.perf_counter() - t
    phases["breaks"] = float(breaks.height)
    del counts
    return phases


def competitor_duckdb(journal: Path, files: Path, out: Path) -> dict[str, float]:
    import duckdb
    import pyarrow as pa

    phases: dict[str, float] = {}
    con = duckdb.connect()
    t = time.perf_counter()  # bench: phase figures
    # The CSVs through DuckDB's own reader; keys need the journal's hash (our kernel), so
    # DuckDB reads the files, and the hash is applied to its result.
    import numpy as np

    from switch.backoffice.recon.kernels import hash_utf8_column
    from switch.currency import CURRENCIES
    from switch.protocols.settlement_files import read_camt053_columns

    parts = []
    for path in sorted(files.iterdir()):
        if path.suffix == ".clr":
            tbl = con.sql(
                "SELECT column1 AS ref, column3 AS amount, column4 AS currency,"
                " CASE WHEN column5 = 'settled' THEN 0 ELSE 3 END AS status, column6 AS time"
                " FROM read_csv(?, header=false, skip=1, all_varchar=false, quote='',"
                " columns={'column0':'VARCHAR','column1':'VARCHAR','column2':'VARCHAR',"
                "'column3':'BIGINT','column4':'BIGINT','column5':'VARCHAR','column6':'BIGINT'},"
                " null_padding=true) WHERE column0 = 'D'", params=[str(path)]).to_arrow_table()
            ch = 1
        elif path.suffix == ".csv":
            numeric = ", ".join(f"('{a}', {n})" for a, (n, _) in CURRENCIES.items())
            tbl = con.sql(
                f"WITH c(alpha, num) AS (VALUES {numeric}) SELECT qr_reference AS ref, amount,"
                " c.num AS currency, CASE WHEN status = 'settled' THEN 0 ELSE 3 END AS status,"
                " settled_at_us AS time FROM read_csv(?, header=true,"
                " types={'qr_reference':'VARCHAR','amount':'BIGINT','settled_at_us':'BIGINT'})"
                " JOIN c ON c.alpha = currency", params=[str(path)]).to_arrow_table()
            ch = 3
        elif path.suffix == ".xml":
            c = read_camt053_columns(path.read_bytes(), str(path))
            tbl = pa.table({"ref": c.reference, "amount": c.amount,
                            "currency": c.currency.astype(np.int64),
                            "status": c.status.astype(np.int64), "time": c.time_us})
            ch = 2
        else:
            continue
        if isinstance(tbl, pa.RecordBatchReader):
            tbl = tbl.read_all()
        ref = tbl.column("ref").combine_chunks().cast(pa.large_string())
        offsets = np.frombuffer(ref.buffers()[1], np.int64)[ref.offset:ref.offset + len(ref) + 1]
        key = hash_utf8_column(np.frombuffer(ref.buffers()[2], np.uint8), offsets, ch)
        parts.append(tbl.append_column("key", pa.array(key)))
    net = pa.concat_tables(parts, promote_options="permissive")  # noqa: F841 - used by SQL
    phases["read files"] = time.perf_counter() - t
    t = time.perf_counter()
    intents, outcomes = _read_journal_arrays(journal)
    it = pa.table({k: intents[k] for k in ("pid", "ref", "amount", "time_us", "currency")})  # noqa: F841
    oc = pa.table({k: outcomes[k] for k in ("pid", "time_us", "status", "kind")})  # noqa: F841
    con.execute(
        "CREATE TEMP TABLE sw AS SELECT i.ref AS key, i.amount, i.currency,"
        " COALESCE(o.status, 4) AS status, COALESCE(o.t, i.time_us) AS time FROM"
        " (SELECT * FROM it QUALIFY row_number() OVER (PARTITION BY pid) = 1) i"
        " LEFT JOIN (SELECT pid, arg_max(status, rowid) AS status, arg_max(time_us, rowid) AS t"
        "  FROM (SELECT *, row_number() OVER () AS rowid FROM oc WHERE kind <= 2) GROUP BY pid) o"
        " ON o.pid = i.pid")
    phases["read journal"] = time.perf_counter() - t
    t = time.perf_counter()
    con.execute(
        "CREATE TEMP TABLE n AS SELECT *, row_number() OVER (PARTITION BY key) AS k FROM net")
    con.execute(
        "CREATE TEMP TABLE b AS WITH s AS (SELECT * FROM sw QUALIFY row_number() OVER"
        " (PARTITION BY key) = 1), j AS (SELECT s.key AS sk, n.key AS nk, s.amount AS sa,"
        " n.amount AS na, s.currency AS sc, n.currency AS nc, s.status AS ss, n.status AS ns,"
        " s.time AS st, n.time AS nt, n.ref FROM s FULL OUTER JOIN (SELECT * FROM n WHERE k = 1)"
        " n ON s.key = n.key) SELECT CASE WHEN sk IS NULL THEN (CASE WHEN ns = 3 THEN"
        " 'orphan_reversal' ELSE 'missing_in_switch' END) WHEN nk IS NULL THEN (CASE WHEN"
        " ss <> 0 THEN 'expected_absent' ELSE 'missing_at_network' END) WHEN sc <> nc THEN"
        " 'currency_mismatch' WHEN sa <> na THEN 'amount_mismatch' WHEN ss <> ns THEN"
        " 'status_mismatch' WHEN nt - st > 86400000000 THEN 'late_settlement' ELSE 'matched'"
        " END AS class, COALESCE(sk, nk) AS key, COALESCE(sa, na) AS amount, ref FROM j"
        " UNION ALL SELECT 'duplicate', key, amount, ref FROM n WHERE k > 1")
    phases["match"] = time.perf_counter() - t
    t = time.perf_counter()
    con.execute(f"COPY (SELECT * FROM b WHERE class NOT IN ('matched', 'expected_absent')"
                f" ORDER BY class, amount DESC) TO '{out / 'breaks.csv'}' (HEADER)")
    phases["write"] = time.perf_counter() - t
    breaks = con.execute(
        "SELECT COUNT(*) FROM b WHERE class NOT IN ('matched', 'expected_absent')").fetchone()
    assert breaks is not None, "SELECT COUNT(*) returned no row"
    phases["breaks"] = float(breaks[0])
    return phases


def _run_competitor(name: str, journal: Path, files: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fn = competitor_polars if name == "polars" else competitor_duckdb
    phases = fn(journal, files, out)
    from switch.backoffice.recon.reconcile import _peak_rss_mb

    phases["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(phases))


# ------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000, help="payments (switch side)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--dir", type=Path, default=None,
                    help="where to generate (default: /tmp/payswitch-recon-e2e-<records>)")
    ap.add_argument("--skip-competitors", action="store_true")
    ap.add_argument("--runs", type=int, default=2, help="measured runs (best is reported)")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false",
                    help="skip the warm-up run (numba cache already warm)")
    ap.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    ap.add_argument("--competitor", choices=["polars", "duckdb"], help=argparse.SUPPRESS)
    ap.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    root = args.dir or Path(f"/tmp/payswitch-recon-e2e-{args.records}")
    if args.generate_only:
        generate(root, args.records, args.seed)
        return
    if args.competitor:
        _run_competitor(args.competitor, root / "journal.db", root / "files",
                        root / f"out-{args.competitor}")
        return
    root.mkdir(parents=True, exist_ok=True)
    marker = root / "planted.json"
    if not (marker.exists() and json.loads(marker.read_text()).get("seed") == args.seed):
        subprocess.run([sys.executable, __file__, "--generate-only", "--records",
                        str(args.records), "--seed", str(args.seed), "--dir", str(root)],
                       check=True)
    journal, files, planted = generate(root, args.records, args.seed)
    size_mb = sum(p.stat().st_size for p in files.iterdir()) / 1e6
    print(f"data: {planted['payments']:,} payments, {planted['network_records']:,} network "
          f"records in {len(list(files.iterdir()))} files ({size_mb:,.0f} MB), journal "
          f"{journal.stat().st_size / 1e6:,.0f} MB; generated in {planted.get('generate_s')} s")
    out = root / "out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [_payswitch(), "reconcile", "--journal", str(journal), "--files", str(files),
           "--out", str(out), "--tol-amount", str(TOL_AMOUNT)]
    if args.warmup:
        # Warm the numba cache once (first use after an install compiles), then measure.
        warm = _child(cmd)
        if warm["returncode"] not in (0, 1):
            sys.exit(f"payswitch reconcile failed ({warm['returncode']}): {warm['stderr']}")
    runs = [_child(cmd) for _ in range(args.runs)]
    for r in runs:
        if r["returncode"] not in (0, 1):
            sys.exit(f"payswitch reconcile failed ({r['returncode']}): {r['stderr']}")
    ours = min(runs, key=lambda r: r["wall_s"])
    summary = json.loads((out / "summary.json").read_text())
    # The command's own high-water mark (VmHWM) as its phases ended, or its ru_maxrss if
    # higher (that also covers what follows the last phase; it would include this parent's
    # size at fork time, but this parent stays small).
    ours["peak_rss_mb"] = max(max(f["peak_rss_mb"] for f in summary["phases"].values()),
                              ours["children_max_rss_mb"])
    check = check_breaks(out, planted)
    comp: dict[str, dict[str, Any]] = {}
    if not args.skip_competitors:
        # Best of as many runs as ours, alternating tools, so a burst of load on a
        # shared machine does not fall on one tool only.
        for _ in range(args.runs):
            for name in ("polars", "duckdb"):
                r = _child([sys.executable, __file__, "--competitor", name, "--dir", str(root)])
                if r["returncode"] != 0:
                    missing = "ModuleNotFoundError" in r["stderr"]
                    print(f"{name}: not installed; `make bench` installs the bench extra"
                          if missing else f"{name} failed: {r['stderr'][-2000:]}")
                    continue
                r["phases"] = json.loads(r["stdout"].strip().splitlines()[-1])
                if name not in comp or r["wall_s"] < comp[name]["wall_s"]:
                    comp[name] = r
    report(args, planted, ours, summary, check, comp, size_mb)


def report(args: argparse.Namespace, planted: dict[str, Any], ours: dict[str, Any],
           summary: dict[str, Any], check: dict[str, Any], comp: dict[str, dict[str, Any]],
           size_mb: float) -> None:
    n_sw, n_net = summary["switch_records"], summary["network_records"]
    rows = []
    for name, f in summary["phases"].items():
        rows.append([name, f"{f['wall_s']:.2f}", f"{f['cpu_s']:.2f}", f"{f['records']:,}",
                     f"{f['records_per_s'] / 1e6:.2f} M/s", f"{f['peak_rss_mb']:,.0f}"])
    rows.append(["**whole command** (subprocess)", f"**{ours['wall_s']:.2f}**",
                 f"{ours['cpu_s']:.2f}", f"{n_sw + n_net:,}",
                 f"{(n_sw + n_net) / ours['wall_s'] / 1e6:.2f} M/s",
                 f"**{ours['peak_rss_mb']:,.0f}**"])
    phase_table = markdown_table(
        ["phase", "wall s", "CPU s", "records", "records/s", "peak RSS MB (so far)"], rows)
    crow = [["payswitch reconcile (numba kernels, columnar)", f"{ours['wall_s']:.2f}",
             f"{ours['cpu_s']:.2f}", f"{ours['peak_rss_mb']:,.0f}",
             " / ".join(f"{f['wall_s']:.2f}" for f in summary["phases"].values()),
             f"{len(summary['first_breaks']) and sum(summary['breaks'].values()):,}"]]
    for name, r in comp.items():
        p = r["phases"]
        crow.append([f"{name} (exact pass only, no HTML)", f"{r['wall_s']:.2f}",
                     f"{r['cpu_s']:.2f}", f"{p['peak_rss_mb']:,.0f}",
                     " / ".join(f"{p[k]:.2f}" for k in ("read files", "read journal", "match",
                                                        "write")),
                     f"{int(p['breaks']):,}"])
    comp_table = markdown_table(
        ["tool", "wall s", "CPU s", "peak RSS MB",
         "read files / read journal / match / write (s)", "breaks"], crow)
    by_class = ", ".join(f"{k} {v[1]}/{v[0]}" for k, v in sorted(check["by_class"].items()))
    verdict = (
        f"Planted breaks found: **{check['found']:,} / {check['planted']:,}** ({by_class}); "
        f"extra breaks: {check['n_extra']}; explained away: {len(check['explained_away'])}; "
        f"missing stand-in payments (advice delivered) found as missing_at_network: "
        f"{check['standin_missing_found']} / {check['standin_missing']}."
    )
    load = os.getloadavg()
    text = (
        f"N = {args.records:,} payments; {n_sw:,} switch records, {n_net:,} network records "
        f"in {size_mb:,.0f} MB of settlement files (card .clr 79%, QR .csv 20%, camt.053 "
        f"1%); seed {args.seed}; load average during the run {load[0]:.1f}.\n\n"
        f"`payswitch reconcile --journal journal.db --files files/ --tol-amount {TOL_AMOUNT}` "
        f"as a subprocess, best of {args.runs} run(s)"
        f"{' after a warm-up run' if args.warmup else ' (numba cache warm)'}; phases from its "
        "summary.json (read files and read journal run at the same time, in threads: their "
        "wall times overlap, and each one's CPU is its own threads'):\n\n"
        f"{phase_table}\n\nSide by side, same files, same machine, best of {args.runs} "
        "run(s) each (wall time depends on the machine's load; CPU time much less):\n\n"
        f"{comp_table}\n\n{verdict}\n"
    )
    print(text)
    if check["missed"] or check["extra"] or check["explained_away"]:
        print(f"missed {check['missed']} extra {check['extra']} "
              f"explained away {check['explained_away']}")
    if args.write:
        write_section(f"recon-e2e-{args.records}",
                      f"Reconciliation end to end: payswitch reconcile, {args.records:,} "
                      "per side, vs polars and DuckDB", text,
                      f"bench/recon/bench_reconcile_e2e.py --records {args.records} --write",
                      write=args.write)


if __name__ == "__main__":
    main()
