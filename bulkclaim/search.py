"""SearchAvailablePhoneNumbers, one page at a time or until enough numbers are found.

``bulkclaim acquire`` takes its candidates from :func:`search_page`; ``bulkclaim search`` lists
numbers with :func:`search_numbers`. Every page is one request through the API's limiter
(``Api.call``: the token bucket, the in-flight cap, jittered retries of 429 / 500).

Throttling is never fatal: a page still throttled (or failing with 500s, timeouts) once ``Api.call``
has spent its retries, each of which lowered the adaptive rate, raises :class:`SearchInterrupted`.
``search_numbers`` then returns what it found so far, marked ``interrupted`` (the CLI exits 1), and
``acquire`` leaves the slots it could not fill open for the next run. Only a refusal (access denied,
unknown target, a bad parameter) is a FatalServiceError.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bulkclaim.calls import Api, CallFailed
from bulkclaim.connect import Classified, Verdict
from bulkclaim.model import FatalServiceError, Target

__all__ = ["PAGE_SIZE", "Found", "SearchInterrupted", "search_numbers", "search_page"]

PAGE_SIZE = 10  # the API's maximum MaxResults


@dataclass(frozen=True)
class Found:
    """What a search found: the numbers (E.164, in the service's order, each once) and whether the
    service had no more to offer (``exhausted``) before ``count`` were found. ``interrupted``: why
    the search stopped early although the service may have more (it kept throttling), else ``None``."""

    numbers: list[str]
    exhausted: bool
    pages: int
    interrupted: str | None = None


class SearchInterrupted(Exception):
    """A search page could not be had for now (throttled, or failing, through every retry): not a
    refusal. Searching again later may well succeed."""

    def __init__(self, classified: Classified) -> None:
        super().__init__(f"SearchAvailablePhoneNumbers kept failing with {classified.code} through every "
                         f"retry: {classified.message}")
        self.classified = classified


async def search_page(api: Api, target: Target, country: str, number_type: str, prefix: str | None = None, *,
                      next_token: str | None = None, size: int = PAGE_SIZE) -> tuple[list[str], str | None]:
    """One page of available numbers and the token of the next page (``None``: this was the last).
    A refusal (access denied, unknown target, a bad parameter) raises FatalServiceError; throttling
    (or 500s) through every retry raises SearchInterrupted."""
    params: dict[str, Any] = {**target.request_params(), "PhoneNumberCountryCode": country,
                              "PhoneNumberType": number_type, "MaxResults": size}
    if prefix:
        params["PhoneNumberPrefix"] = prefix
    if next_token:
        params["NextToken"] = next_token
    try:
        page = await api.call("SearchAvailablePhoneNumbers", "search_available_phone_numbers", **params)
    except CallFailed as failed:
        if failed.classified.verdict == Verdict.RETRY:
            raise SearchInterrupted(failed.classified) from None
        raise FatalServiceError(failed.classified.code, f"SearchAvailablePhoneNumbers failed: "
                                f"{failed.classified.message}") from None
    return [row["PhoneNumber"] for row in page.get("AvailableNumbersList", [])], page.get("NextToken")


async def search_numbers(api: Api, target: Target, country: str, number_type: str, prefix: str | None, count: int,
                         *, on_page: Callable[[int], None] | None = None) -> Found:
    """Up to ``count`` distinct available numbers, following NextToken until there are enough or
    the service has no more, or until a page cannot be had (``interrupted``: see SearchInterrupted).
    ``on_page(found so far)`` is called after each page."""
    numbers: dict[str, None] = {}  # ordered and distinct: a number offered on two pages counts once
    token: str | None = None
    pages = 0
    while len(numbers) < count:
        try:
            page, token = await search_page(api, target, country, number_type, prefix, next_token=token,
                                            size=min(PAGE_SIZE, count - len(numbers)))
        except SearchInterrupted as interrupted:
            return Found(list(numbers), exhausted=False, pages=pages, interrupted=str(interrupted))
        pages += 1
        numbers.update(dict.fromkeys(page))
        if on_page is not None:
            on_page(len(numbers))
        if token is None:
            break
    found = list(numbers)[:count]
    return Found(found, exhausted=len(found) < count, pages=pages)
