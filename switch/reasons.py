"""Reason codes the switch itself returns, on one scale for every channel.

We reuse ISO 8583 DE39 codes because acquirers already understand them; where the switch
rejects before any network is involved, it uses the code a real switch would (for example
91 when no route is available). SWIFT and QR network reasons are mapped onto this scale by
the adapters, and the network's own code is kept in the result's channel reference.
"""

from typing import Final

APPROVED: Final = "00"
DO_NOT_HONOUR: Final = "05"
INVALID_TRANSACTION: Final = "12"  # a transaction type the switch does not take
INVALID_AMOUNT: Final = "13"
INVALID_CARD: Final = "14"
INSUFFICIENT_FUNDS: Final = "51"
FORMAT_ERROR: Final = "30"  # the request cannot be put into the network's format
EXPIRED_CARD: Final = "54"
NOT_PERMITTED: Final = "57"
OVER_AMOUNT_LIMIT: Final = "61"
RESTRICTED: Final = "62"  # blocklisted card or account
OVER_FREQUENCY_LIMIT: Final = "65"  # velocity: too many, or too much, in the window
RESPONSE_TOO_LATE: Final = "68"
ISSUER_UNAVAILABLE: Final = "91"
DUPLICATE_TRANSMISSION: Final = "94"
SYSTEM_MALFUNCTION: Final = "96"

# Rejections before a payment is accepted (error responses, not payment results).
E_MALFORMED: Final = "malformed"
E_INVALID: Final = "invalid"
E_IDEMPOTENCY_CONFLICT: Final = "idempotency_conflict"
E_OVERLOADED: Final = "overloaded"
E_FRAME_TOO_LARGE: Final = "frame_too_large"
E_SHUTTING_DOWN: Final = "shutting_down"
E_UNKNOWN_OP: Final = "unknown_op"
E_UNAVAILABLE: Final = "unavailable"  # the journal failed: fail-stop
E_MOVED: Final = "moved"  # a key another cluster worker owns (switch/protocols/shardmap.py)
E_NOT_FOUND: Final = "not_found"  # a query for a key the switch does not know
