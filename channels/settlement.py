"""Settlement files: at every cut-off each simulator writes what its real counterpart sends.

* card scheme  -> ``<scheme>-<cycle>.clr``  clearing records of authorizations still
  standing at the cut-off (reversed ones are not cleared), and a ``reversed`` record for
  an authorization cleared in an earlier cycle and reversed since (a reversal that
  lands just after a cut: reconciliation pairs the two, see
  :func:`switch.backoffice.recon.reconcile.match`);
* SWIFT network -> ``<network>-<cycle>.xml``  a camt.053 statement of payments settled
  (ACSC) in the cycle;
* QR scheme    -> ``<network>-<cycle>.csv``  approved payments of the cycle, one row each,
  or (``net_qr_by_merchant``) one netted row per merchant and currency.

One simulator process owns its ``out_dir``: it holds a lock on ``.settlement.lock`` there
while it runs, so a second one pointed at the same directory refuses to start rather than
overwrite the first's files. A restarted simulator continues the numbering after the
files already there (and a SWIFT statement opens with the last one's closing balance),
and, with ``books_on_disk`` (the default), takes its books back from ``out_dir``
(channels/books.py): what it booked and what each earlier file cleared, so nothing is
cleared twice or forgotten.

Each record is written once, in the cycle it became final (a cleared card authorization
may be followed by one ``reversed`` record). With ``discrepancy_rate`` > 0
a seeded share of records is planted wrong (missing, amount off, duplicated, unknown
reference) and the plan is logged to ``<file>.discrepancies.json``, so reconciliation can
be checked to find exactly what was planted. The formats are in
:mod:`switch.protocols.settlement_files`.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

import anyio
import msgspec

from channels.books import (
    BOOKS_FILE,
    CARD_KIND,
    QR_KIND,
    SWIFT_KIND,
    BookEntry,
    BookStore,
    hold_key_text,
)
from channels.config import SettlementSpec
from switch.currency import CURRENCIES, NUMERIC_TO_ALPHA
from switch.dirlock import DirInUse, claim_dir, release_dir
from switch.protocols.settlement_files import (
    SettlementEntry,
    closing_balances,
    encode_camt053,
    encode_card_clearing,
    encode_qr_csv,
    inject_discrepancies,
    statement_closing,
)

if TYPE_CHECKING:
    from channels.card import CardScheme, HoldKey
    from channels.tcp import SimServer

log = logging.getLogger(__name__)
NUMERIC = {alpha: num for alpha, (num, _) in CURRENCIES.items()}
#: Held (flock) by the one simulator process writing an out_dir.
LOCK_FILE: Final = ".settlement.lock"
#: File extension per kind of network.
EXTENSIONS: Final = {"card": "clr", "swift": "xml", "qr": "csv"}


class SettlementDirInUse(Exception):
    """Another simulator process (or writer) already writes to this out_dir."""


def claim_out_dir(out_dir: Path) -> int:
    """Create ``out_dir`` and lock it for this writer; the lock's file descriptor
    (switch/dirlock.py: the kernel drops the lock when the holder dies, even by kill -9,
    so a crashed simulator never leaves the directory claimed)."""
    try:
        return claim_dir(out_dir, LOCK_FILE)
    except DirInUse as exc:
        raise SettlementDirInUse(
            f"settlement.out_dir {out_dir}: in use by another simulator (pid {exc.holder}); "
            "two writing one directory replace each other's files: give each its own "
            "out_dir") from None


def last_cycle(out_dir: Path, names: Mapping[str, str]) -> int:
    """The highest cycle among ``out_dir``'s files of these networks (``names``: network
    -> extension), 0 when there are none."""
    return max(last_cycles(out_dir, names).values(), default=0)


def last_cycles(out_dir: Path, names: Mapping[str, str]) -> dict[str, int]:
    """Per network (``names``: network -> extension), the highest cycle of its files in
    ``out_dir``, 0 when it has none."""
    patterns = {name: re.compile(rf"{re.escape(name)}-(\d+)\.{ext}")
                for name, ext in names.items()}
    highest = dict.fromkeys(names, 0)
    for entry in os.scandir(out_dir):
        for name, pattern in patterns.items():
            match = pattern.fullmatch(entry.name)
            if match is not None:
                highest[name] = max(highest[name], int(match.group(1)))
    return highest


class SettlementSource(Protocol):
    """What the writer reads at each cut-off: the card books and every network's ledger."""

    @property
    def card_schemes(self) -> Mapping[str, CardScheme]: ...

    @property
    def networks(self) -> Mapping[str, SimServer]: ...


class SettlementWriter:
    def __init__(self, runtime: SettlementSource, spec: SettlementSpec, *,
                 clock: Callable[[], float] = anyio.current_time) -> None:
        """``clock``: the cycle times (settlement timestamps only), anyio's by default; a
        caller outside an event loop (the simulator) passes one that needs none."""
        self.runtime = runtime
        self.spec = spec
        self.out_dir = Path(spec.out_dir)
        self._lock_fd: int | None = claim_out_dir(self.out_dir)
        try:
            #: The cycle of the last cut: a restart continues after the files there.
            self.cycle = last_cycle(self.out_dir, self._file_names())
        except BaseException:
            self.close()
            raise
        if self.cycle:
            log.info("settlement files in %s up to cycle %d: continuing at %d",
                     self.out_dir, self.cycle, self.cycle + 1)
        self._written: set[tuple[str, object]] = set()
        #: Per card scheme, how many of its records (in insertion order) a cut has decided.
        #: Records are never removed and a reversed or "none" record never becomes active
        #: again, so each is decided once, at the first cut that sees it: a cut reads only
        #: the records since the last one (walking them all made every cut cost the whole
        #: book, a twentieth of a simulated payment's CPU).
        self._card_seen: dict[str, int] = {}
        #: A card record's DE49 (ISO numeric text) -> alpha currency (None: unusable): a
        #: handful of distinct texts, looked up for every record cleared.
        self._alpha_of: dict[str, str | None] = {}
        #: Per SWIFT network, its nostro's balance per currency after the last statement:
        #: the next statement's opening balance (camt.053 Stmt/Bal OPBD).
        self._balances = {name: self._last_closing(name) for name, ext
                          in self._file_names().items() if ext == "xml"}
        self._rng = random.Random(spec.seed)
        self._clock = clock
        self._origin = clock()
        self._wall_origin = time.time()  # wall anchor for settlement timestamps
        self.files: list[Path] = []
        #: The networks' books on disk (channels/books.py), None with books_on_disk off.
        self.books: BookStore | None = None
        if spec.books_on_disk:
            try:
                self.books = BookStore(self.out_dir / BOOKS_FILE)
                self._restore(self.books)
            except BaseException:
                self.close()
                raise

    def _file_names(self) -> dict[str, str]:
        """Network name -> the extension of its settlement files."""
        names = dict.fromkeys(self.runtime.card_schemes, EXTENSIONS["card"])
        for name, server in self.runtime.networks.items():
            if server.spec.kind != "card":  # a card network's scheme writes its files
                names[name] = EXTENSIONS[server.spec.kind]
        return names

    def _last_closing(self, name: str) -> dict[str, int]:
        """The closing balances of ``name``'s last statement in out_dir (none: empty)."""
        if not self.cycle:
            return {}
        path = self.out_dir / f"{name}-{self.cycle:04d}.xml"
        try:
            return statement_closing(path.read_bytes(), path.name)
        except FileNotFoundError:
            return {}  # a network new to this directory: its first statement opens at zero
        except (OSError, ValueError) as exc:
            # Opening balances are informative (reconciliation matches entries); a
            # statement that cannot be read costs the chain, not the start.
            log.warning("%s: cannot read its closing balances (%s); the next statement "
                        "opens at zero", path, exc)
            return {}

    def _restore(self, store: BookStore) -> None:
        """Give every network its book back, and this writer what the cuts before the
        restart decided: which entries were cleared (or decided not to be), and which
        card reversals were reported. A mark counts only up to its network's last file
        here: a cut commits its marks before it writes the file (:meth:`cut`)."""
        files = last_cycles(self.out_dir, self._file_names())
        now, wall_now = self._clock(), time.time()
        restored = 0
        for name, scheme in self.runtime.card_schemes.items():
            entries = scheme.restore(store, now, wall_now)
            self._restore_card(name, scheme, entries, files.get(name, 0))
            restored += len(entries)
        for name, server in self.runtime.networks.items():
            if server.spec.kind == "card":
                server.books = store  # its scheme's book (above); commits before answers
                continue
            payments = cast(Any, server).restore(store)
            last = files.get(name, 0)
            self._written.update((name, e.key) for e in payments if 0 < e.written <= last)
            restored += len(payments)
        if restored:
            log.info("books restored from %s: %d entries", store.path, restored)

    def _restore_card(self, name: str, scheme: CardScheme, entries: list[BookEntry],
                      last: int) -> None:
        # Each cut decides every record booked since the one before, so the records a
        # cut on disk decided are the first ones, in booking order.
        seen = 0
        for entry, record in zip(entries, scheme.records.values(), strict=True):
            if not entry.written or abs(entry.written) > last:
                break
            seen += 1
            if entry.written > 0:
                self._written.add((name, record.key))
                if record.state == "reversed" and not 0 < entry.reversal_written <= last:
                    scheme.reversed_keys.append(record.key)  # reported at the next cut
        assert all(not e.written or abs(e.written) > last for e in entries[seen:]), (
            f"{name}: records decided by a cut after undecided ones")
        self._card_seen[name] = seen

    def close(self) -> None:
        """Release out_dir for another writer (idempotent)."""
        if self.books is not None:
            self.books.close()
            self.books = None
        if self._lock_fd is not None:
            release_dir(self._lock_fd)
            self._lock_fd = None

    def _wall_us(self, at: float) -> int:
        return int((self._wall_origin + (at - self._origin)) * 1_000_000)

    async def run(self) -> None:
        while True:
            await anyio.sleep(self.spec.cycle_s)
            self.cut()

    def cut(self) -> list[Path]:
        """Write one cycle's files for every network; returns the paths written.

        Runs on the event loop, between requests, so the books it reads are consistent;
        a cycle of thousands of records takes milliseconds. With the books on disk, what
        each file clears is marked in them before the file is written: a crash between
        the two leaves marks beyond the last file, which a restart disbelieves
        (:meth:`_restore`), so the entries are cleared again, once, by the next cut.
        """
        self.cycle += 1
        self.out_dir.mkdir(parents=True, exist_ok=True)
        now = self._clock()
        written: list[Path] = []
        for name, scheme in self.runtime.card_schemes.items():
            written.append(self._write(name, "clr", self._card_entries(name, scheme, now), now))
        for name, server in self.runtime.networks.items():
            kind = server.spec.kind
            if kind == "swift":
                written.append(self._write(name, "xml", self._swift_entries(name, server), now))
            elif kind == "qr":
                entries = self._qr_entries(name, server, now)
                if self.spec.net_qr_by_merchant:
                    entries = self._net(entries, now)
                written.append(self._write(name, "csv", entries, now))
        self.files += written
        return written

    def _mark(self, name: str, kind: str, marks: list[tuple[str, int]],
              column: str = "written") -> None:
        if self.books is not None:
            self.books.mark(name, kind, marks, column)

    def _card_entries(self, name: str, scheme: CardScheme, now: float
                      ) -> list[SettlementEntry]:
        """The clearing records of this cut: reversals of records cleared earlier, and
        the records booked since the last cut that still stand."""
        cycle = self.cycle
        entries, reversed_keys = self._card_reversals(name, scheme, now)
        records = scheme.records
        seen = self._card_seen.get(name, 0)
        # The records since the last cut, read from the book's end: skipping the first
        # ``seen`` of them walked the whole book at every cut.
        fresh = list(itertools.islice(reversed(records.items()), len(records) - seen))
        fresh.reverse()
        self._card_seen[name] = seen + len(fresh)
        written_keys, alpha_of = self._written, self._alpha_of
        marks: list[tuple[str, int]] = []
        wall_us = self._wall_us(now)
        for key, record in fresh:
            if record.state != "active" or record.kind == "none":
                marks.append((hold_key_text(key), -cycle))  # decided: never cleared
                continue
            de49 = record.currency
            currency = alpha_of.get(de49)
            if currency is None and de49 not in alpha_of:
                currency = alpha_of[de49] = NUMERIC_TO_ALPHA.get(int(de49 or "0"))
            if currency is None:
                # Cannot be cleared without a currency: report it, never guess one.
                log.error("%s: record %s has no usable currency (DE49 %r); not cleared",
                          name, key, record.currency)
                marks.append((hold_key_text(key), -cycle))
                continue
            # Fresh at exactly one cut (never removed, each key booked once), so not
            # written yet: no look-up in the written keys, only the mark.
            written_keys.add((name, key))
            marks.append((hold_key_text(key), cycle))
            entries.append(SettlementEntry(record.rrn, f"{key[0]}|{key[1]}", record.amount,
                                           currency, "settled", wall_us))
        self._mark(name, CARD_KIND, marks)
        self._mark(name, CARD_KIND, [(hold_key_text(k), cycle) for k in reversed_keys],
                   "reversal_written")
        return entries

    def _swift_entries(self, name: str, server: SimServer) -> list[SettlementEntry]:
        """The payments settled (ACSC) since the last cut."""
        entries: list[SettlementEntry] = []
        marks: list[tuple[str, int]] = []
        for uetr, record in list(server.book.items()):  # type: ignore[attr-defined]
            if record.status != "ACSC" or (name, uetr) in self._written:
                continue
            self._written.add((name, uetr))
            marks.append((uetr, self.cycle))
            ct = record.ct
            entries.append(SettlementEntry(uetr, ct.end_to_end_id, ct.amount_minor,
                                           ct.currency, "settled",
                                           self._wall_us(record.settled_at)))
        self._mark(name, SWIFT_KIND, marks)
        return entries

    def _qr_entries(self, name: str, server: SimServer, now: float
                    ) -> list[SettlementEntry]:
        """The payments approved since the last cut."""
        entries: list[SettlementEntry] = []
        marks: list[tuple[str, int]] = []
        for ref, (merchant, currency) in list(server.settlement_keys.items()):  # type: ignore[attr-defined]
            if (name, ref) in self._written:
                continue
            self._written.add((name, ref))
            marks.append((ref, self.cycle))
            amount = server.amounts[ref]  # type: ignore[attr-defined]
            entries.append(SettlementEntry(ref, merchant, amount, currency, "settled",
                                           self._wall_us(now)))
        self._mark(name, QR_KIND, marks)
        return entries

    def _card_reversals(self, name: str, scheme: CardScheme, now: float
                        ) -> tuple[list[SettlementEntry], list[HoldKey]]:
        """``reversed`` records for authorizations cleared earlier and reversed since,
        and their keys.

        The switch reverses a payment whose outcome it lost (a crash, a timeout) as soon
        as it can; when that lands just after a cut-off, the issuer has already cleared
        the authorization, and without this record its files would say "settled"
        forever while its book says reversed.
        """
        out: list[SettlementEntry] = []
        keys: list[HoldKey] = []
        reversed_keys = scheme.reversed_keys
        for _ in range(len(reversed_keys)):
            key = reversed_keys.popleft()
            record = scheme.records.get(key)
            # Not cleared yet: the loop below skips it (reversed records are not cleared).
            if record is None or (name, key) not in self._written:
                continue
            currency = NUMERIC_TO_ALPHA.get(int(record.currency or "0"))
            if currency is None:
                continue  # never cleared either: logged when it was skipped
            assert record.state == "reversed", "only a reversal is queued"
            out.append(SettlementEntry(record.rrn, f"{key[0]}|{key[1]}", record.amount,
                                       currency, "reversed", self._wall_us(now)))
            keys.append(key)
        return out, keys

    def _net(self, entries: list[SettlementEntry], now: float) -> list[SettlementEntry]:
        totals: dict[tuple[str, str], int] = {}
        for e in entries:
            totals[(e.secondary, e.currency)] = totals.get((e.secondary, e.currency), 0) + e.amount
        return [SettlementEntry(f"NET-{merchant}-{self.cycle:04d}", merchant, amount, currency,
                                "settled", self._wall_us(now))
                for (merchant, currency), amount in sorted(totals.items())]

    def _encode(self, name: str, ext: str, entries: list[SettlementEntry], now: float) -> bytes:
        if ext == "clr":
            return encode_card_clearing(name, str(self.cycle), entries, NUMERIC).encode()
        if ext == "xml":
            opening = self._balances.get(name, {})
            # Opening balance: what the previous statement closed with (as written,
            # planted discrepancies included, so each file adds up on its own).
            self._balances[name] = closing_balances(opening, entries)
            return encode_camt053(f"{name}-{self.cycle}", f"NOSTRO-{name}", self._wall_us(now),
                                  entries, opening=opening)
        return encode_qr_csv(entries).encode()

    def _write(self, name: str, ext: str, entries: list[SettlementEntry], now: float) -> Path:
        path = self.out_dir / f"{name}-{self.cycle:04d}.{ext}"
        if self.spec.discrepancy_rate > 0:
            entries, planted = inject_discrepancies(entries, self.spec.discrepancy_rate,
                                                    self._rng)
            path.with_suffix(path.suffix + ".discrepancies.json").write_text(
                json.dumps(msgspec.to_builtins(planted), indent=1))
        data = self._encode(name, ext, entries, now)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # a reader never sees half a file
        log.info("settlement file %s: %d records", path, len(entries))
        return path
