"""Pages of List/Search answers, and NextTokens that only this sandbox can have issued.

A NextToken is opaque to clients: Connect answers ``InvalidParameterException`` (the error both
paginated phone-number operations list in the model) to a token it did not issue. The sandbox signs
each token with a key drawn when it starts (or is reset), so a forged, edited, truncated token, one
issued by another sandbox or before a reset, or one issued for another operation, is refused. The
model's own ``min``/``max`` lengths (an empty token) are checked earlier, by the validator.
Whether the real service also refuses a token replayed with different filters is not documented; the
sandbox does not bind tokens to filters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import Any

from bulkclaim.sandbox.state import ServiceError

__all__ = ["Paginator"]


class Paginator:
    """Cuts result lists into pages and issues / checks signed NextTokens."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def page(self, operation: str, rows: list[dict[str, Any]], body: dict[str, Any], *,
             default_size: int) -> tuple[list[dict[str, Any]], str | None]:
        """The page of ``rows`` the request asks for, and the token of the next page if there is one.

        ``MaxResults`` is within the model's range by now (the validator saw it)."""
        size = body.get("MaxResults") or default_size
        token = body.get("NextToken")
        start = self._offset(operation, token) if token is not None else 0
        end = start + size
        return rows[start:end], self._issue(operation, end) if end < len(rows) else None

    def _issue(self, operation: str, offset: int) -> str:
        payload = base64.urlsafe_b64encode(json.dumps({"op": operation, "offset": offset}).encode()).decode()
        return f"{payload}.{self._sign(payload)}"

    def _offset(self, operation: str, token: Any) -> int:
        payload, _, signature = str(token).rpartition(".")
        if not payload or not hmac.compare_digest(signature, self._sign(payload)):
            raise _invalid_token()
        content = json.loads(base64.urlsafe_b64decode(payload))
        if content.get("op") != operation:
            raise _invalid_token()
        return int(content["offset"])

    def _sign(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()


def _invalid_token() -> ServiceError:
    return ServiceError("InvalidParameterException", 400, "The NextToken is not valid.")
