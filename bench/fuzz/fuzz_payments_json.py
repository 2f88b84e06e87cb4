"""Fuzz target: the HTTP API's payment body (POST /v1/payments), what any HTTP client's
bytes reach: decode, and for a body that decodes, the core's request built from it.

Declared outcome: none raised. ``decode_body`` answers every input with a body or a
field error (its JSON pointer and detail go into a problem+json answer), so anything
escaping it is a finding: a 500 where the client should have been told which field.
"""

from __future__ import annotations

import msgspec

from switch.protocols.payments_json import Problem, decode_body, to_request


def seeds() -> list[bytes]:
    from bench.fuzz.seeds import payments_json_seeds

    return payments_json_seeds()


def TestOneInput(data: bytes) -> None:
    body, error = decode_body(data)
    assert (body is None) != (error is None)
    if error is not None:
        assert error.pointer == "" or error.pointer.startswith("/"), error
        # What the door answers (switch/serve/http_api.py): it must encode.
        msgspec.json.encode(Problem(type="invalid-body", title="invalid", status=422,
                                    detail=f"{error.pointer or 'body'}: {error.detail}",
                                    errors=[error]))
        return
    assert body is not None
    to_request(body, "fuzz-key")
