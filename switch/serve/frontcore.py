"""The one seam between the front doors (ISO 8583, HTTP) and the payment core.

Every door turns its bytes into a :class:`~switch.model.PaymentRequest` and calls
:meth:`FrontCore.submit`; that is the *only* place a door reaches the pipeline, so when
the core changes shape (a batched core behind an awaitable ``submit``), this adapter is
what gets re-pointed. The same path as every other payment: validation, idempotency,
risk, routing, journal.

Two more things the doors need are answered here from what the core already keeps:

- :meth:`find` (``GET /v1/payments/{id}``): the journal is the store of record, so the
  last result journaled for a payment id is read from it (a read-only SQLite connection
  in a worker thread; WAL readers never block the writer).
- :meth:`reverse` (ISO 8583 0400/0420): undo an approved payment. The reversal is made
  durable *before* it is acknowledged, by journaling the payment's intent again: replay
  then treats it as unfinished, and recovery hands it to the resolver, which reverses
  card payments with the issuer and journals the final ``reversed`` state. So a
  reversal acknowledged with 00 survives kill -9 the same way a payment does.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from typing import Any, Final

import anyio
import anyio.to_thread
import msgspec

from switch import reasons
from switch.journal import JournalFailed, JournalFull, JournalRecord, OnFull
from switch.journal.reader import ARCHIVE_SCHEMA, archive_path
from switch.model import Payment, PaymentRequest, Result
from switch.observability.metrics import SwitchMetrics
from switch.payment.core import Rejected
from switch.payment.reversal import MAX_REVERSALS_IN_FLIGHT, Plan, Resolving, Reversals
from switch.serve.engine import Engine

log = logging.getLogger(__name__)
_payment_decoder: Final = msgspec.msgpack.Decoder(Payment)
_result_decoder: Final = msgspec.msgpack.Decoder(Result)

#: The latest result journaled for a payment id (``{schema}``: live or archive). Both
#: lookups read the journal's payment id index (store.SCHEMA, newest entry first), not
#: the table: a miss in the live journal is then a few page reads, not a scan of it and
#: of the whole archive.
FIND_SQL: Final = (
    "SELECT record, idempotency_key FROM {schema}.journal WHERE payment_id = ?"
    " AND kind IN ('final', 'unknown') ORDER BY seq DESC LIMIT 1")
#: The latest intent journaled for a payment id.
INTENT_SQL: Final = (
    "SELECT record, body_hash FROM {schema}.journal WHERE payment_id = ?"
    " AND kind = 'intent' ORDER BY seq DESC LIMIT 1")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the core said: a result (``replay`` if stored earlier) or a refusal."""

    result: Result | None
    replay: bool = False
    error_code: str = ""
    error_message: str = ""


#: The longest a reversal of a stand-in approval waits for its advice on the wire to land
#: (StandIn._deliver gives an advice 2 s).
ADVICE_LANDS_S: Final = 2.5


class FrontCore:
    """The core as the front doors see it."""

    def __init__(self, pipeline: Engine, journal_path: str, *,
                 resolving: Resolving | None = None) -> None:
        """``resolving``: the resolver's queue (app.py passes it), asked whether it holds
        a payment: a reversal accepted before a restart is the resolver's, and a repeat
        of it is answered as one under way, never claimed again. None: nothing to ask
        (tests' fakes of the engine)."""
        self._pipeline = pipeline
        self._journal_path = journal_path
        # The reversals being decided or handed to the resolver (payment id -> original
        # key), swept of those the resolver finished (the index then holds ``reversed``).
        self._reversals = Reversals(MAX_REVERSALS_IN_FLIGHT)
        self._resolving = resolving
        self._reader: sqlite3.Connection | None = None
        self._archived = False  # the archive is attached to ``_reader``
        self._reader_lock = anyio.Lock()
        self.in_flight = 0
        self.draining = False
        self._idle = anyio.Event()
        self._idle.set()

    async def submit(self, request: PaymentRequest) -> Outcome:
        """The adapter: one payment through the core (re-point here at merge time)."""
        if self.draining:
            return Outcome(None, error_code=reasons.E_SHUTTING_DOWN,
                           error_message="switch is shutting down")
        self.in_flight += 1
        if self._idle.is_set():
            self._idle = anyio.Event()
        try:
            submitted = await self._pipeline.submit(request)
        except Rejected as exc:  # counted in payswitch_rejected_requests by the core
            return Outcome(None, error_code=exc.code, error_message=exc.message)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
        return Outcome(submitted.result, submitted.replay)

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new payments from the doors and wait for those in flight."""
        self.draining = True
        with anyio.move_on_after(timeout_s):
            await self._idle.wait()
            return True
        return False

    @property
    def metrics(self) -> SwitchMetrics:
        """The switch's metrics: the doors count their own refusals on the same series."""
        return self._pipeline.metrics

    def stored(self, idempotency_key: str) -> Result | None:
        """The stored result for a key, or None (unknown key or still in flight)."""
        entry = self._pipeline.index.get(idempotency_key)
        return None if entry is None else entry.result

    def reversal_deciding(self, idempotency_key: str) -> bool:
        """A reversal of this key's payment is being decided here (Reversals.deciding):
        the payment is not the resolver's to take back yet."""
        return self._reversals.deciding(idempotency_key)

    def indexed(self, idempotency_key: str) -> bool:
        """The idempotency index holds this key (answered, in flight or being resolved)."""
        return self._pipeline.index.get(idempotency_key) is not None

    # ------------------------------------------------------------------ lookups

    def _read(self, sql: str, args: tuple[str, ...]) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` (on ``journal``), from the live journal, else from the archive.

        Retention archives a payment once its key is past the idempotency window or the
        ``max_keys`` newest; the index may remember it a little longer (it evicts by when
        a payment first answered, start-up by its final), and a reversal or a lookup of
        it must still find it. Live first: nearly every lookup is of a recent payment,
        and the archive only grows.
        """
        if self._reader is None:
            self._reader = sqlite3.connect(
                f"file:{self._journal_path}?mode=ro", uri=True, check_same_thread=False
            )
        rows = list(self._reader.execute(sql.format(schema="main"), args))
        if rows or not self._attach_archive(self._reader):
            return rows
        return list(self._reader.execute(sql.format(schema=ARCHIVE_SCHEMA), args))

    def _attach_archive(self, db: sqlite3.Connection) -> bool:
        # Looked for at each miss until found: the switch's own start creates it, but a
        # reader may have opened the journal first.
        if not self._archived:
            path = archive_path(self._journal_path)
            if not path.exists():
                return False
            db.execute(f"ATTACH DATABASE ? AS {ARCHIVE_SCHEMA}", (f"file:{path}?mode=ro",))
            self._archived = True
        return True

    async def _query(self, sql: str, args: tuple[str, ...]) -> list[tuple[Any, ...]]:
        async with self._reader_lock:
            return await anyio.to_thread.run_sync(self._read, sql, args)

    async def find(self, payment_id: str) -> tuple[Result, str] | None:
        """The latest result journaled for ``payment_id`` and its idempotency key (None:
        unknown, or still in flight)."""
        rows = await self._query(FIND_SQL, (payment_id,))
        if not rows:
            return None
        record, key = rows[0]
        return _result_decoder.decode(record), str(key)

    async def _intent(self, payment_id: str) -> tuple[Payment, bytes] | None:
        # A reversal re-journals the same intent, so the latest one is the payment as
        # first journaled.
        rows = await self._query(INTENT_SQL, (payment_id,))
        return (_payment_decoder.decode(rows[0][0]), rows[0][1]) if rows else None

    # ------------------------------------------------------------------ reversal

    async def reverse(self, original_key: str, wait_s: float = 5.0,
                      amount: int | None = None) -> str:
        """Reverse the payment stored under ``original_key``; returns DE39.

        00: reversed, handed to the resolver to be reversed (by this process, or before a
        restart: the resolver holds it), or nothing to undo (declined, failed, already
        reversed, or unknown -- the resolver reverses unknown card payments by itself);
        25: no such original; 91: cannot take the reversal now, or a repeat of
        one still being decided (the acquirer repeats it);
        13: ``amount`` is not the original's (a whole payment is reversed or nothing: a
        reversal of 1 once released a hold of 1,250).

        The decisions are :class:`~switch.payment.reversal.Reversals`' (sans-IO: the
        simulator's acquirer runs the same ones); this is their shell: the wait for a
        result, the journal's intent read and write, the stand-in advice on the wire.
        """
        pipeline = self._pipeline
        reversals = self._reversals
        entry = reversals.lookup(pipeline.index, original_key)
        if isinstance(entry, str):
            return entry
        result = entry.result
        if result is None:
            with anyio.move_on_after(wait_s):
                result = await entry.wait()
        answer = reversals.admit(pipeline.index, original_key, result, amount,
                                 self._resolving)
        if answer is not None:
            return answer
        assert result is not None
        pid = result.payment_id
        try:
            found = await self._intent(pid)
            # Asked again after the read's await: had the resolver taken or finished the
            # payment meanwhile, its intent journaled now would follow (or race) its final
            # (the module docstring of switch/payment/reversal.py).
            plan = reversals.plan(pid, found, amount, pipeline.router, pipeline.index,
                                  self._resolving)
        except BaseException:
            reversals.release(pid)
            raise
        if isinstance(plan, str):
            return plan
        # From the intent's write to the hand-over, shielded: cancelled halfway (the
        # acquirer's connection closed, a shutdown), a durable reversal was left with
        # nobody to hand it to the resolver, and its stand-in advice not withdrawn.
        code = reasons.ISSUER_UNAVAILABLE
        with anyio.CancelScope(shield=True):
            code = await self._reverse_durably(result, plan)
        return code

    async def _reverse_durably(self, result: Result, plan: Plan) -> str:
        """Journal the reversal's intent, then (durable) withdraw a stand-in advice, let one
        on the wire land, and hand the reversal to the resolver: 00, or 91 if the intent
        could not be journaled."""
        pipeline, reversals = self._pipeline, self._reversals
        pid = result.payment_id
        # Nothing sent yet: shed on a full journal (answered 91, the acquirer repeats).
        record = JournalRecord.intent(plan.payment, plan.digest, pipeline.clock.wall_us())
        try:
            await pipeline.journal.write(record, OnFull.SHED)
        except (JournalFull, JournalFailed):
            reversals.release(pid)
            return reasons.ISSUER_UNAVAILABLE
        except BaseException:
            reversals.release(pid)
            raise
        # Durable: from here a crash still ends in a reversal (recovery resolves it).
        standin = pipeline.standin if result.stood_in else None
        try:
            if standin is not None and reversals.withdraw_advice(result, standin):
                # Approved in stand-in, its 0120 advice not yet sent is withdrawn: a start
                # after this does not queue it again (the reversal's intent reopened the
                # payment). One on the wire now is let land first, so the reversal
                # follows it; meanwhile the payment is ours (Reversals.deciding), so a
                # refill of the resolver does not send the reversal ahead of it.
                with anyio.move_on_after(ADVICE_LANDS_S):
                    await standin.settled(pid)
        except Exception:  # a bug here must not keep the reversal from the resolver
            log.exception("reversal of %s: the stand-in advice step failed", pid)
        try:
            pipeline.resolver.submit(plan.payment, plan.digest, plan.route)
        except BaseException:
            # Not handed over: let go, so a repeat claims it again (its intent journaled
            # again is harmless) and a refill may take it back; never 00 for it.
            reversals.release(pid)
            raise
        reversals.handed_over(pid)
        return reasons.APPROVED

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
            self._archived = False
