"""MT103 reader: legacy SWIFT FIN customer transfers, translated into a pacs.008 CreditTransfer.

The MT/MX coexistence period for cross-border payments ended in November 2025, so the
switch speaks pacs.008 and treats MT103 purely as legacy input to translate. There is
deliberately no MT103 writer.

Translation choices (following the usual MT-to-MX mapping):

* ``:20:`` sender's reference -> MsgId and InstrId; EndToEndId is the ``/ROC/`` reference
  from ``:70:`` when present, else ``NOTPROVIDED`` (MT103 has no end-to-end field).
* ``:32A:`` YYMMDD + currency + amount with a decimal comma -> IntrBkSttlmDt and the
  amount in minor units (more decimals than the currency has is an error).
* ``:50K:`` / ``:59:`` -> Dbtr/Cdtr: an optional ``/account`` line (IBAN-shaped -> IBAN,
  otherwise Othr/Id), the first other line as the name, the rest as address lines.
* ``:52A:`` / ``:57A:`` -> DbtrAgt/CdtrAgt BIC; when absent, the message's sender and
  receiver are the ordering and account-with institutions, as in FIN itself.
* ``:70:`` (4x35) -> RmtInf/Ustrd, lines concatenated without a separator: FIN breaks
  lines at 35 characters wherever they fall, not at word boundaries.
* ``:71A:`` OUR/SHA/BEN -> ChrgBr DEBT/SHAR/CRED; SttlmMtd is INDA (correspondent).
* block 3 tag 121 -> UETR, which is mandatory here as it is on the SWIFT network.

Only the options named above are read (50K, 52A, 57A, 59); other options of those tags
are refused with an error naming the tag rather than half-translated. Other optional
tags (13C, 33B, 71F, 72, ...) are accepted and ignored.
"""

from __future__ import annotations

from datetime import date
from typing import Final

from switch.protocols.errors import CodecError
from switch.protocols.iso20022 import (
    CURRENCY_EXPONENTS,
    ChargeBearer,
    CreditTransfer,
    Party,
    check_bic,
    check_iban,
    check_uetr,
)

__all__ = ["MAX_MT_CHARS", "parse_mt103"]

#: Block 4 of a FIN message holds at most 10,000 characters; headers add a few hundred.
MAX_MT_CHARS: Final = 16 * 1024

# SWIFT "X" character set, plus the line break. Checked once over block 4 so that field
# parsers can assume plain printable ASCII.
_X_CHARSET: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/-?:().,'+ \n"
)
_CHARGES: Final[dict[str, ChargeBearer]] = {"OUR": "DEBT", "SHA": "SHAR", "BEN": "CRED"}
_BANK_OPERATION_CODES: Final = frozenset({"CRED", "SPAY", "SSTD", "SPRI"})
_READ_TAGS: Final = frozenset({"20", "23B", "32A", "50K", "52A", "57A", "59", "70", "71A"})
_MANDATORY: Final = ("20", "23B", "32A", "50K", "59", "71A")
# Options of the tags we read that we do not translate.
_UNSUPPORTED_OPTIONS: Final = {
    "50A": "50K", "50F": "50K", "52D": "52A", "57B": "57A", "57C": "57A", "57D": "57A",
    "59A": "59", "59F": "59",
}  # fmt: skip


def parse_mt103(text: str | bytes, *, created_at: str | None = None) -> CreditTransfer:
    """Translate one MT103 into a :class:`CreditTransfer`.

    ``created_at`` becomes GrpHdr/CreDtTm; an MT103 carries no creation time, and this
    module reads no clock, so it defaults to midnight of the value date.
    """
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError:
            raise CodecError("FIN messages are ASCII", "message") from None
    elif not isinstance(text, str):
        raise CodecError(f"expected str or bytes, got {type(text).__name__}", "message")
    if len(text) > MAX_MT_CHARS:
        raise CodecError(f"message exceeds MAX_MT_CHARS={MAX_MT_CHARS}", "message")
    blocks = _split_blocks(text.replace("\r\n", "\n").strip())
    for needed in ("1", "2", "3", "4"):
        if needed not in blocks:
            raise CodecError("missing block", f"block {needed}")
    sender, receiver = _addresses(blocks["1"], blocks["2"])
    uetr = _block3_tags(blocks["3"]).get("121")
    if uetr is None:
        raise CodecError("missing UETR in block 3", "tag 121")
    check_uetr(uetr, "tag 121")
    fields = _block4_fields(blocks["4"])

    ref = _reference(fields["20"])
    bank_op = _one_line(fields["23B"], "23B")
    if bank_op not in _BANK_OPERATION_CODES:
        raise CodecError(f"{bank_op!r} is not CRED|SPAY|SSTD|SPRI", "tag 23B")
    value_date, currency, amount_minor = _amount(_one_line(fields["32A"], "32A"))
    charges = _one_line(fields["71A"], "71A")
    charge_bearer = _CHARGES.get(charges)
    if charge_bearer is None:
        raise CodecError(f"{charges!r} is not OUR|SHA|BEN", "tag 71A")
    remittance, end_to_end = None, "NOTPROVIDED"
    if "70" in fields:
        lines = _lines(fields["70"], "70", 4)
        remittance = "".join(lines)
        if lines[0].startswith("/ROC/"):
            roc = lines[0][5:].split("/", 1)[0].strip()
            if roc:
                end_to_end = roc
    return CreditTransfer(
        msg_id=ref,
        created_at=created_at if created_at is not None else f"{value_date}T00:00:00",
        settlement_method="INDA",
        instr_id=ref,
        end_to_end_id=end_to_end,
        uetr=uetr,
        amount_minor=amount_minor,
        currency=currency,
        settlement_date=value_date,
        charge_bearer=charge_bearer,
        debtor=_party(fields["50K"], "50K"),
        debtor_agent_bic=_agent(fields["52A"], "52A") if "52A" in fields else sender,
        creditor_agent_bic=_agent(fields["57A"], "57A") if "57A" in fields else receiver,
        creditor=_party(fields["59"], "59"),
        remittance=remittance,
    )


# --------------------------------------------------------------------------- blocks


def _split_blocks(text: str) -> dict[str, str]:
    """``{1:...}{2:...}{3:{k:v}...}{4:\\n...\\n-}{5:...}`` -> block id -> raw content."""
    blocks: dict[str, str] = {}
    pos, n = 0, len(text)
    while pos < n:
        if text[pos] != "{":
            raise CodecError(f"expected '{{' at offset {pos}", "message")
        colon = text.find(":", pos + 1)
        bid = text[pos + 1 : colon] if colon != -1 else ""
        if bid not in ("1", "2", "3", "4", "5"):
            raise CodecError(f"unknown or malformed block at offset {pos}", "message")
        if bid in blocks:
            raise CodecError("block appears twice", f"block {bid}")
        if bid == "4":
            # Block 4 is a text block: a line holding just '-' closes it.
            end = text.find("\n-}", colon)
            if end == -1:
                raise CodecError("not terminated by '-}'", "block 4")
            blocks[bid] = text[colon + 1 : end]
            pos = end + 3
        elif bid in ("3", "5"):
            # A sequence of {tag:value} sub-blocks, then the closing brace.
            i = colon + 1
            while i < n and text[i] == "{":
                close = text.find("}", i)
                if close == -1:
                    raise CodecError("unterminated sub-block", f"block {bid}")
                i = close + 1
            if i >= n or text[i] != "}":
                raise CodecError("unterminated block", f"block {bid}")
            blocks[bid] = text[colon + 1 : i]
            pos = i + 1
        else:
            close = text.find("}", colon)
            if close == -1:
                raise CodecError("unterminated block", f"block {bid}")
            blocks[bid] = text[colon + 1 : close]
            pos = close + 1
    return blocks


def _bic_from_lt(lt: str, where: str) -> str:
    """12-character logical terminal address -> BIC (drop the terminal code, XXX branch)."""
    if len(lt) != 12 or not lt[8].isalpha():
        raise CodecError(f"{lt!r} is not a 12-character logical terminal address", where)
    bic = lt[:8] if lt[9:] == "XXX" else lt[:8] + lt[9:]
    return check_bic(bic, where)


def _addresses(block1: str, block2: str) -> tuple[str, str]:
    """(sender BIC, receiver BIC) from the basic and application headers."""
    # F01 + logical terminal (12) + session number (4) + sequence number (6)
    if len(block1) != 25 or not block1.startswith("F01") or not block1[15:].isdigit():
        raise CodecError("basic header must be F01 + 12-character address + 10 digits",
                         "block 1")
    own = _bic_from_lt(block1[3:15], "block 1")
    if block2[1:4] != "103":
        raise CodecError(f"not an MT103 (message type {block2[1:4]!r})", "block 2")
    # Input to SWIFT: block 1 is the sender, block 2 the receiver (I103 + address +
    # optional priority, delivery monitoring and obsolescence period).
    if block2[:1] == "I" and 16 <= len(block2) <= 21:
        return own, _bic_from_lt(block2[4:16], "block 2")
    # Output from SWIFT: O103 + input time + MIR (date, sender address, session, sequence)
    # + output date and time [+ priority]; block 1 is the receiver.
    if block2[:1] == "O" and 46 <= len(block2) <= 47:
        return _bic_from_lt(block2[14:26], "block 2"), own
    raise CodecError("application header is neither a valid input (I) nor output (O) header",
                     "block 2")


def _block3_tags(block3: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in block3[1:-1].split("}{") if block3 else ():
        key, sep, value = part.partition(":")
        if not sep:
            raise CodecError(f"malformed sub-block {part!r}", "block 3")
        tags[key] = value
    return tags


def _block4_fields(block4: str) -> dict[str, list[str]]:
    """Field tag -> value lines. Continuation lines never start with ':' in FIN."""
    if not _X_CHARSET.issuperset(block4):
        bad = sorted(set(block4) - _X_CHARSET)[0]
        raise CodecError(f"character {bad!r} is outside the SWIFT X character set", "block 4")
    lines = block4.split("\n")
    if lines[0]:
        raise CodecError("fields must start on the line after '{4:'", "block 4")
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines[1:]:
        if line.startswith(":"):
            end = line.find(":", 1)
            tag = line[1:end] if end > 0 else ""
            if not (
                2 <= len(tag) <= 3
                and tag[:2].isdigit()
                and (len(tag) == 2 or tag[2].isupper())
            ):
                raise CodecError(f"malformed field tag in line {line[:12]!r}", "block 4")
            if tag in _UNSUPPORTED_OPTIONS:
                raise CodecError(
                    f"option not supported (expected {_UNSUPPORTED_OPTIONS[tag]})", f"tag {tag}"
                )
            current = [line[end + 1 :]]
            if tag in _READ_TAGS:
                if tag in fields:
                    raise CodecError("field appears more than once", f"tag {tag}")
                fields[tag] = current
        elif current is None:
            raise CodecError("text before the first field", "block 4")
        else:
            current.append(line)
    for tag in _MANDATORY:
        if tag not in fields:
            raise CodecError("mandatory field missing", f"tag {tag}")
    return fields


# --------------------------------------------------------------------------- fields


def _lines(value: list[str], tag: str, max_lines: int, width: int = 35) -> list[str]:
    if len(value) > max_lines:
        raise CodecError(f"more than {max_lines} lines", f"tag {tag}")
    for line in value:
        if not line or len(line) > width:
            raise CodecError(f"lines must be 1..{width} characters", f"tag {tag}")
    return value


def _one_line(value: list[str], tag: str) -> str:
    if len(value) != 1 or not value[0]:
        raise CodecError("expected a single non-empty line", f"tag {tag}")
    return value[0]


def _reference(value: list[str]) -> str:
    ref = _one_line(value, "20")
    if len(ref) > 16 or ref.startswith("/") or ref.endswith("/") or "//" in ref:
        raise CodecError("reference must be 1..16 characters without leading, trailing or "
                         "double '/'", "tag 20")
    return ref


def _amount(value: str) -> tuple[str, str, int]:
    """``YYMMDDCCCnnn,dd`` -> (YYYY-MM-DD, currency, minor units)."""
    ymd, currency, amount = value[:6], value[6:9], value[9:]
    if not (len(ymd) == 6 and ymd.isdigit()):
        raise CodecError(f"value date {ymd!r} is not YYMMDD", "tag 32A")
    try:
        # FIN's two-digit years are all in this century.
        value_date = date(2000 + int(ymd[:2]), int(ymd[2:4]), int(ymd[4:6]))
    except ValueError:
        raise CodecError(f"value date {ymd!r} is not a calendar date", "tag 32A") from None
    exp = CURRENCY_EXPONENTS.get(currency)
    if exp is None:
        raise CodecError(f"currency {currency!r} is not in the exponent table", "tag 32A")
    whole, comma, frac = amount.partition(",")
    if (
        not comma
        or not whole.isdigit()
        or (frac and not frac.isdigit())
        or len(amount) > 15
    ):
        raise CodecError(f"amount {amount!r} is not digits with one decimal comma", "tag 32A")
    if len(frac) > exp:
        raise CodecError(f"amount {amount!r} has more than {exp} decimals for {currency}",
                         "tag 32A")
    minor = int(whole) * 10**exp + (int(frac) * 10 ** (exp - len(frac)) if frac else 0)
    return value_date.isoformat(), currency, minor


def _party(value: list[str], tag: str) -> Party:
    """``[/account]`` then name and address lines (4x35 in all)."""
    lines = list(value)
    iban = account_id = None
    if lines and lines[0].startswith("/"):
        account = lines.pop(0)[1:]
        if not account or len(account) > 34:
            raise CodecError("account must be 1..34 characters after '/'", f"tag {tag}")
        if _looks_like_iban(account):
            iban = check_iban(account, f"tag {tag}")
        else:
            account_id = account
    _lines(lines, tag, 4)
    if not lines:
        raise CodecError("name line missing", f"tag {tag}")
    return Party(name=lines[0], iban=iban, account_id=account_id, address_lines=tuple(lines[1:]))


def _looks_like_iban(account: str) -> bool:
    return (
        15 <= len(account) <= 34
        and account[:2].isalpha()
        and account[:2].isupper()
        and account[2:4].isdigit()
        and account.isalnum()
    )


def _agent(value: list[str], tag: str) -> str:
    """``[/party identifier]`` then the BIC; only the BIC is translated."""
    lines = value[1:] if len(value) == 2 and value[0].startswith("/") else value
    return check_bic(_one_line(lines, tag), f"tag {tag}")
