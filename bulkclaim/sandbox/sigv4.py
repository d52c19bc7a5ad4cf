"""Server-side verification of AWS Signature Version 4, written from the published algorithm.

The sandbox accepts only requests a real client signed with one of its configured key pairs, so a
tool that forgets to sign, signs for the wrong service or uses the wrong secret fails here exactly
as it would against AWS, with the same error names.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote

from bulkclaim.sandbox.config import Credentials

__all__ = ["AuthError", "check_signature", "scope_region"]

_ALGORITHM = "AWS4-HMAC-SHA256"
_MAX_SKEW = timedelta(minutes=15)


class AuthError(Exception):
    """A rejected signature: ``code`` is the error name the real front end answers with (all 403)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


@functools.lru_cache(maxsize=64)
def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    # The derived key changes once a day per region and service: derive it once, not per request.
    key = _hmac(f"AWS4{secret}".encode(), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return key


def _canonical_query(raw_query: str) -> str:
    pairs = []
    for part in raw_query.split("&") if raw_query else []:
        key, _, value = part.partition("=")
        pairs.append((quote(unquote(key), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _parse_authorization(header: str) -> dict[str, str]:
    algorithm, _, rest = header.partition(" ")
    if algorithm != _ALGORITHM:
        raise AuthError("IncompleteSignatureException", f"Unsupported signature algorithm {algorithm!r}.")
    fields: dict[str, str] = {}
    for item in rest.split(","):
        name, _, value = item.strip().partition("=")
        fields[name] = value
    if not {"Credential", "SignedHeaders", "Signature"} <= fields.keys():
        raise AuthError("IncompleteSignatureException",
                        "Authorization header requires Credential, SignedHeaders and Signature.")
    return fields


def scope_region(headers: Mapping[str, str]) -> str:
    """The Region a request's credential is scoped to (call after :func:`verify` accepted it)."""
    return _parse_authorization(headers.get("Authorization", "")).get("Credential", "").split("/")[2]


def check_signature(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    body: bytes,
    service: str,
    credentials: Mapping[str, Credentials],
    now: datetime | None = None,
    regions: Collection[str] | None = None,
) -> Credentials:
    """Check the request's SigV4 signature; return the matching credentials or raise AuthError.

    ``headers`` must be case-insensitive (aiohttp's CIMultiDict is). ``regions``: the regions this
    endpoint serves; a credential scoped to another is refused as AWS's regional endpoints refuse it
    (403 InvalidSignatureException "Credential should be scoped to a valid region, not '...'. "),
    before the signature itself is checked.
    """
    header = headers.get("Authorization")
    if not header:
        raise AuthError("MissingAuthenticationTokenException", "Missing Authentication Token")
    fields = _parse_authorization(header)
    scope_parts = fields["Credential"].split("/")
    if len(scope_parts) != 5 or scope_parts[4] != "aws4_request":
        raise AuthError("IncompleteSignatureException", "Credential scope is malformed.")
    access_key, date, region, scope_service, _ = scope_parts
    known = credentials.get(access_key)
    if known is None:
        raise AuthError("UnrecognizedClientException", "The security token included in the request is invalid.")
    if scope_service != service:
        raise AuthError("InvalidSignatureException",
                        f"Credential should be scoped to correct service: '{service}'.")
    if regions is not None and region not in regions:
        raise AuthError("InvalidSignatureException", f"Credential should be scoped to a valid region, not '{region}'. ")
    amz_date = headers.get("X-Amz-Date", "")
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise AuthError("IncompleteSignatureException", "X-Amz-Date is missing or malformed.") from None
    if abs((now or datetime.now(UTC)) - signed_at) > _MAX_SKEW:
        raise AuthError("InvalidSignatureException", "Signature expired: the request time is too skewed.")
    if not amz_date.startswith(date):
        raise AuthError("InvalidSignatureException", "Credential date does not match X-Amz-Date.")

    signed_names = fields["SignedHeaders"].split(";")
    if "host" not in signed_names:
        raise AuthError("InvalidSignatureException", "The host header must be signed.")
    canonical_headers = "".join(
        f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed_names
    )
    payload_hash = headers.get("X-Amz-Content-SHA256") or hashlib.sha256(body).hexdigest()
    canonical_request = "\n".join([
        method.upper(),
        quote(raw_path, safe="/~"),
        _canonical_query(raw_query),
        canonical_headers,
        fields["SignedHeaders"],
        payload_hash,
    ])
    string_to_sign = "\n".join([
        _ALGORITHM, amz_date, f"{date}/{region}/{scope_service}/aws4_request",
        hashlib.sha256(canonical_request.encode("utf-8")).hexdigest(),
    ])
    key = _signing_key(known.secret_access_key, date, region, scope_service)
    expected = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, fields["Signature"]):
        raise AuthError("InvalidSignatureException",
                        "The request signature we calculated does not match the signature you provided.")
    return known
