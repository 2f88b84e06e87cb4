"""ISO 4217 currencies the switch accepts, with their minor-unit exponents.

Amounts travel as integers in minor units; the exponent is what turns 12345 into
123.45 USD or 12345 JPY. A currency missing from this table is rejected at validation,
because guessing an exponent would misstate an amount by a factor of 100 or 1000.
"""

from __future__ import annotations

from typing import Final

#: alpha code -> (numeric code, minor-unit exponent)
CURRENCIES: Final[dict[str, tuple[int, int]]] = {
    "AED": (784, 2),
    "AUD": (36, 2),
    "BHD": (48, 3),
    "BRL": (986, 2),
    "CAD": (124, 2),
    "CHF": (756, 2),
    "CNY": (156, 2),
    "CZK": (203, 2),
    "DKK": (208, 2),
    "EUR": (978, 2),
    "GBP": (826, 2),
    "HKD": (344, 2),
    "IDR": (360, 2),
    "INR": (356, 2),
    "JOD": (400, 3),
    "JPY": (392, 0),
    "KES": (404, 2),
    "KRW": (410, 0),
    "KWD": (414, 3),
    "MXN": (484, 2),
    "MYR": (458, 2),
    "NGN": (566, 2),
    "NOK": (578, 2),
    "NZD": (554, 2),
    "OMR": (512, 3),
    "PHP": (608, 2),
    "PLN": (985, 2),
    "SAR": (682, 2),
    "SEK": (752, 2),
    "SGD": (702, 2),
    "THB": (764, 2),
    "TRY": (949, 2),
    "TWD": (901, 2),
    "USD": (840, 2),
    "VND": (704, 0),
    "ZAR": (710, 2),
}

NUMERIC_TO_ALPHA: Final[dict[int, str]] = {num: alpha for alpha, (num, _) in CURRENCIES.items()}


def exponent(currency: str) -> int:
    """Minor-unit exponent of ``currency``; KeyError if unknown."""
    return CURRENCIES[currency][1]


def numeric_code(currency: str) -> int:
    return CURRENCIES[currency][0]


def format_amount(minor_units: int, currency: str) -> str:
    """Render minor units as a decimal string, e.g. (12345, "USD") -> "123.45"."""
    exp = exponent(currency)
    if exp == 0:
        return str(minor_units)
    sign = "-" if minor_units < 0 else ""
    whole, frac = divmod(abs(minor_units), 10**exp)
    return f"{sign}{whole}.{frac:0{exp}d}"


def to_major(minor_units: int, currency: str) -> float:
    """Approximate major units, for FX comparisons only; never for booking."""
    return minor_units / float(10 ** exponent(currency))
