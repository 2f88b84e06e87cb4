"""The HTTP/JSON payments API's messages, sans-IO: JSON bytes in, Structs out, and back.

``POST /v1/payments`` takes a :class:`PaymentBody` (a payment request without its
idempotency key, which travels in the ``Idempotency-Key`` header) and answers a
:class:`PaymentResource`. Errors are RFC 9457 problem details (:class:`Problem`) whose
``errors`` name the field path as a JSON pointer (``/payer/account``).

Shared by the switch's HTTP API, the load harness's HTTP client and the Locust user, so
all three agree on the format by construction; the OpenAPI document is generated from
these types (:func:`openapi_document`).
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from switch.model import (
    MAX_KEY_CHARS,
    CardData,
    Channel,
    CurrencyCode,
    MinorUnits,
    Party,
    PaymentRequest,
    QrData,
    Result,
    SwiftData,
)

__all__ = [
    "PROBLEM_JSON",
    "FieldError",
    "PaymentBody",
    "PaymentResource",
    "Problem",
    "decode_body",
    "openapi_document",
    "resource_of",
    "to_request",
]

PROBLEM_JSON: Final = "application/problem+json"
PROBLEM_BASE: Final = "https://payswitch.dev/problems/"


class PaymentBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/payments`` body: exactly one of card / swift / qr, matching ``channel``."""

    channel: Channel
    amount: MinorUnits
    currency: CurrencyCode
    payer: Party
    payee: Party
    card: CardData | None = None
    swift: SwiftData | None = None
    qr: QrData | None = None


class PaymentResource(msgspec.Struct, frozen=True, omit_defaults=True):
    """A payment's result as the API shows it."""

    payment_id: str
    idempotency_key: str
    status: str
    reason: str
    channel_ref: str = ""
    route: str = ""
    stood_in: bool = False
    aml_flag: bool = False


class FieldError(msgspec.Struct, frozen=True):
    pointer: str  # JSON pointer into the request body, e.g. "/card/pan"
    detail: str


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str = ""
    instance: str = ""
    errors: list[FieldError] = []
    code: str = ""  # the switch's own refusal code (overloaded, idempotency_conflict, ...)


_decoder: Final = msgspec.json.Decoder(PaymentBody)
_PATH: Final = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_UNKNOWN: Final = re.compile(r"Object contains unknown field `(.*)`", re.DOTALL)


def json_pointer(path: str) -> str:
    """``$.card.pan`` / ``payment.card.pan`` style paths as a JSON pointer ``/card/pan``."""
    path = path.removeprefix("payment").lstrip(".$")
    parts = re.split(r"\.|\[(\d+)\]", path)
    return "/" + "/".join(p for p in parts if p) if path else ""


def decode_body(data: bytes) -> tuple[PaymentBody | None, FieldError | None]:
    """The body, or the first error with its JSON pointer (``/amount``)."""
    try:
        return _decoder.decode(data), None
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH.search(text)
        pointer = json_pointer(match.group("path")) if match else ""
        detail = text[: match.start()] if match else text
        unknown = _UNKNOWN.fullmatch(detail)
        if unknown:
            # The client's own key: escaped as RFC 6901 says ("a/b" is "/a~1b", not the
            # path "/a/b"), and whole even when it holds a backtick.
            name = unknown.group(1).replace("~", "~0").replace("/", "~1")
            pointer = f"{pointer}/{name}"
            detail = "unknown field"
        return None, FieldError(pointer, detail)
    except msgspec.DecodeError as exc:
        return None, FieldError("", f"not valid JSON: {exc}")
    except ValueError as exc:  # invalid UTF-8 inside a string: it was a bare 500
        return None, FieldError("", f"not valid JSON: {exc}")


def to_request(body: PaymentBody, idempotency_key: str) -> PaymentRequest:
    """The core's request (the body was bounds-checked by its decoder, the key by the caller)."""
    return PaymentRequest(idempotency_key, body.channel, body.amount, body.currency, body.payer,
                          body.payee, body.card, body.swift, body.qr)


def resource_of(result: Result, idempotency_key: str) -> PaymentResource:
    return PaymentResource(
        payment_id=result.payment_id,
        idempotency_key=idempotency_key,
        status=result.status.value,
        reason=result.reason,
        channel_ref=result.channel_ref,
        route=result.route,
        stood_in=result.stood_in,
        aml_flag=result.aml_flag,
    )


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the payments API (checked in as docs/openapi.json)."""
    _, components = msgspec.json.schema_components(
        [PaymentBody, PaymentResource, Problem], ref_template="#/components/schemas/{name}")
    problem = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    resource = {"application/json": {"schema": {"$ref": "#/components/schemas/PaymentResource"}}}

    def problem_response(text: str) -> dict[str, Any]:
        return {"description": text, "content": problem}

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "payswitch payments API",
            "version": "1",
            "description": (
                "Payments through the switch's core: validation, idempotency, risk, "
                "routing and a durable journal, the same path as every other interface. "
                "Idempotency follows the IETF httpapi Idempotency-Key draft; errors are "
                "RFC 9457 problem details naming the field as a JSON pointer."
            ),
        },
        "paths": {
            "/v1/payments": {
                "post": {
                    "operationId": "createPayment",
                    "summary": "Submit a payment (idempotent by Idempotency-Key)",
                    "parameters": [{
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": True,
                        "description": f"Unique per payment: UTF-8 text of 1-{MAX_KEY_CHARS} "
                                       "characters, not beginning with iso: (bytes that "
                                       "are not UTF-8 get 400). A replay with the same "
                                       "body returns the stored result "
                                       "(Idempotent-Replayed: true); another body with "
                                       "the same key gets 422.",
                        "schema": {"type": "string", "minLength": 1,
                                   "maxLength": MAX_KEY_CHARS},
                    }],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/PaymentBody"}}},
                    },
                    "responses": {
                        "201": {"description": "The payment's result (any final status, "
                                               "or unknown while it is being resolved)",
                                "content": resource},
                        "400": problem_response("Missing or invalid Idempotency-Key (not UTF-8, "
                                                "too long, or beginning with iso:), or "
                                                "unreadable JSON"),
                        "413": problem_response("Body larger than http.max_body_bytes"),
                        "421": problem_response("In a cluster, another worker owns the "
                                                "Idempotency-Key (code moved; detail names "
                                                "its shard and HTTP address); nothing "
                                                "journaled"),
                        "422": problem_response("A field is invalid (errors[].pointer "
                                                "names it), or the Idempotency-Key was "
                                                "used with a different body"),
                        "431": problem_response("Request line and headers above 16 KiB"),
                        "503": problem_response("Overloaded, shutting down or journal "
                                                "unavailable; retry after Retry-After"),
                    },
                }
            },
            "/v1/payments/{payment_id}": {
                "get": {
                    "operationId": "getPayment",
                    "summary": "The latest journaled result of a payment",
                    "parameters": [{"name": "payment_id", "in": "path", "required": True,
                                    "schema": {"type": "string", "maxLength": 64}}],
                    "responses": {
                        "200": {"description": "The payment", "content": resource},
                        "404": problem_response("No journaled result for this id"),
                        "431": problem_response("Request line and headers above 16 KiB"),
                    },
                }
            },
        },
        "components": {"schemas": components},
    }


def openapi_text() -> str:
    """docs/openapi.json as checked in: ``python -m switch.protocols.payments_json``."""
    return msgspec.json.format(msgspec.json.encode(openapi_document()), indent=2).decode() + "\n"


if __name__ == "__main__":
    print(openapi_text(), end="")
