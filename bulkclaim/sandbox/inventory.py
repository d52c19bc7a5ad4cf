"""Building the sandbox's stock of available numbers, generated or loaded from a file.

Generated numbers are real-looking and valid for their country according to ``phonenumbers``, so
inputs made from them pass the same E.164 validation a user's file goes through.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import phonenumbers

from bulkclaim.sandbox.config import InventorySpec

__all__ = ["InventoryError", "StockNumber", "generate", "load_file"]

_NUMBER_TYPES = ("TOLL_FREE", "DID", "UIFN", "SHARED", "THIRD_PARTY_TF", "THIRD_PARTY_DID", "SHORT_CODE")


class InventoryError(ValueError):
    """An inventory specification or file that cannot be used, with the reason."""


@dataclass(frozen=True)
class StockNumber:
    """One number the sandbox can hand out."""

    phone_number: str
    country: str
    type: str


def _national_length(country: str) -> int:
    example = phonenumbers.example_number(country)
    if example is None:
        raise InventoryError(f"unknown country code {country!r}")
    return len(phonenumbers.national_significant_number(example))


def generate(spec: InventorySpec) -> Iterator[StockNumber]:
    """Yield ``spec.count`` distinct valid numbers of ``spec.country`` beginning with ``spec.prefix``."""
    if spec.type not in _NUMBER_TYPES:
        raise InventoryError(f"unknown phone number type {spec.type!r}")
    calling_code = phonenumbers.country_code_for_region(spec.country)
    if calling_code == 0:
        raise InventoryError(f"unknown country code {spec.country!r}")
    head = f"+{calling_code}"
    prefix = spec.prefix if spec.prefix.startswith("+") else "+" + spec.prefix
    if not prefix.startswith(head):
        raise InventoryError(f"prefix {spec.prefix!r} is not in country {spec.country} ({head})")
    free_digits = _national_length(spec.country) - (len(prefix) - len(head))
    if free_digits < 1:
        raise InventoryError(f"prefix {spec.prefix!r} is too long for country {spec.country}")
    produced = 0
    first = 10 ** (free_digits - 1) * 2  # away from all-zero tails, which are rarely valid
    # A prefix can be sparse (most of its numbers invalid): scan a bounded window, not the whole range.
    last = min(10**free_digits, first + spec.count * 50 + 10_000)
    for tail in range(first, last):
        candidate = f"{prefix}{tail:0{free_digits}d}"
        parsed = phonenumbers.parse(candidate)
        if phonenumbers.is_valid_number(parsed) and phonenumbers.region_code_for_number(parsed) == spec.country:
            yield StockNumber(candidate, spec.country, spec.type)
            produced += 1
            if produced == spec.count:
                return
    raise InventoryError(f"could not find {spec.count} valid numbers under {spec.prefix!r} "
                         f"(found {produced}); try a longer, more specific prefix")


def load_file(path: Path) -> Iterator[StockNumber]:
    """Read a CSV with a ``phone_number`` column and optional ``type`` (default DID)."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "phone_number" not in reader.fieldnames:
            raise InventoryError(f"{path}: needs a header with a phone_number column")
        for line, row in enumerate(reader, start=2):
            raw = (row.get("phone_number") or "").strip()
            try:
                parsed = phonenumbers.parse(raw)
            except phonenumbers.NumberParseException as exc:
                raise InventoryError(f"{path}:{line}: {raw!r} is not an E.164 number ({exc})") from None
            number_type = (row.get("type") or "DID").strip()
            if number_type not in _NUMBER_TYPES:
                raise InventoryError(f"{path}:{line}: unknown type {number_type!r}")
            country = phonenumbers.region_code_for_number(parsed) or "US"
            yield StockNumber(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164),
                              country, number_type)
