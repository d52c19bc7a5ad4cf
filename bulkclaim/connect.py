"""The Connect client: built with botocore's retries off, explicit timeouts and a sized pool.

Retries happen at exactly one layer, ours (DESIGN §2): botocore's own retries would bypass the
limiter, so every client is built with ``total_max_attempts=1``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import AioSession, get_session
from botocore import exceptions as botocore_errors

from bulkclaim.model import ConfigurationError
from bulkclaim.settings import ClientSettings

if TYPE_CHECKING:  # stubs are a dev dependency: never imported at run time
    from types_aiobotocore_connect import ConnectClient

__all__ = ["Classified", "ClientSettings", "IncompleteAnswer", "Verdict", "aws_client", "check_answer", "classify",
           "client_config", "connect_client", "limit_reached"]

# Errors that say the caller, not the number, is wrong: every further request would fail the same way.
_FATAL_CODES = frozenset({
    "AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
    "MissingAuthenticationTokenException", "IncompleteSignatureException", "ExpiredTokenException",
    "InvalidClientTokenId", "SignatureDoesNotMatch", "ServiceQuotaExceededException",
})
_THROTTLE_CODES = frozenset({"ThrottlingException", "TooManyRequestsException", "Throttling",
                             "RequestLimitExceeded"})


def limit_reached(status_message: str) -> bool:
    """Does a FAILED claim's status message say its target is at its phone-number quota? The
    PhoneNumberStatus reference: the target "has reached its limit of total claimed numbers"."""
    return "limit of total claimed numbers" in status_message.lower()


class Verdict(StrEnum):
    RETRY = "retry"  # send again, same token
    UNAVAILABLE = "unavailable"  # "not available" or 409: someone else's, or ours if our token was used before
    TERMINAL = "terminal"  # this number fails; the run goes on
    FATAL = "fatal"  # the run stops: credentials, permissions, unknown target, quota


@dataclass(frozen=True)
class Classified:
    """What an error means for the number and the run."""

    verdict: Verdict
    code: str
    message: str
    throttled: bool = False
    #: No connection to the service could be opened (refused, DNS, connect timeout): the request
    #: certainly did not reach it, and the endpoint, not this request, is the problem (see outage.py).
    unreachable: bool = False


class SingleAttemptSession(AIOHTTPSession):
    """aiobotocore's HTTP session with aiohttp's own retry switched off.

    aiohttp silently re-sends an idempotent request (GET DescribePhoneNumber, DELETE ReleasePhoneNumber)
    once when a kept-alive connection drops: a second attempt that never passed our limiter. Retries
    belong to exactly one layer (DESIGN §2). ``_retry_connection`` is private to aiohttp; the pinned
    versions are covered by a test that counts requests on both sides.
    """

    async def _get_session(self, proxy_url: Any) -> Any:
        session = await super()._get_session(proxy_url)  # type: ignore[misc]  # private, not in the stubs
        session._retry_connection = False
        return session


def client_config(settings: ClientSettings) -> AioConfig:
    """botocore configuration with retries off: our limiter and backoff own every attempt."""
    return AioConfig(
        http_session_cls=SingleAttemptSession,
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=settings.max_pool_connections,
    )


@asynccontextmanager
async def connect_client(settings: ClientSettings, session: AioSession | None = None
                         ) -> AsyncIterator[ConnectClient]:
    """An aiobotocore Connect client for ``settings``; credentials come from the standard chain
    unless given explicitly (tests and the sandbox)."""
    async with aws_client("connect", settings, session) as client:
        yield client


@asynccontextmanager
async def aws_client(service: str, settings: ClientSettings, session: AioSession | None = None
                     ) -> AsyncIterator[Any]:
    """An aiobotocore client of ``service`` built as :func:`connect_client` builds Connect's."""
    if session is None:
        session = AioSession(profile=settings.profile) if settings.profile else get_session()
    # botocore reads AWS_DEFAULT_REGION and the profile; AWS_REGION is what the AWS CLI v2 and most
    # tooling set, so honour it too (explicit setting first).
    region = settings.region or os.environ.get("AWS_REGION") or None
    try:
        creator = session.create_client(
            service,  # type: ignore[call-overload,misc]  # a literal per overload in the stubs
            region_name=region,
            endpoint_url=settings.endpoint_url,
            aws_access_key_id=settings.aws_access_key_id,
            aws_secret_access_key=settings.aws_secret_access_key,
            aws_session_token=settings.aws_session_token,
            config=client_config(settings),
        )
        client = await creator.__aenter__()
    except botocore_errors.NoRegionError:
        raise ConfigurationError("no AWS region: give a region (--region, AWS_REGION or AWS_DEFAULT_REGION) "
                                 "or a profile that has one") from None
    except botocore_errors.ProfileNotFound as exc:
        raise ConfigurationError(str(exc)) from None
    try:
        yield client
    finally:
        await creator.__aexit__(None, None, None)


class IncompleteAnswer(Exception):
    """A 200 without the answer in it: an empty, truncated or HTML body, as a proxy or load balancer
    in the way can send. The request may well have taken effect: an unknown outcome, never an answer."""

    def __init__(self, operation: str, missing: str) -> None:
        super().__init__(f"{operation} answered 200 without {missing} (an empty, truncated or foreign body)")


def check_answer(operation: str, answer: dict[str, Any]) -> None:
    """Raise IncompleteAnswer unless ``answer`` holds what ``operation`` always answers with.

    botocore parses a body that is not JSON (or empty) into an answer with no fields at all. A listing
    may leave out an empty list, so one is accepted without it only if the service's request id shows
    the service itself answered."""
    missing = [key for key in _ANSWER_KEYS.get(operation, ()) if key not in answer]
    listed = _LIST_KEYS.get(operation)
    if listed and listed not in answer and not answer.get("ResponseMetadata", {}).get("RequestId"):
        missing.append(listed)
    if missing:
        raise IncompleteAnswer(operation, ", ".join(missing))


_ANSWER_KEYS = {"ClaimPhoneNumber": ("PhoneNumberId", "PhoneNumberArn"),
                "UpdatePhoneNumber": ("PhoneNumberId", "PhoneNumberArn"),
                "DescribePhoneNumber": ("ClaimedPhoneNumberSummary",)}
_LIST_KEYS = {"ListPhoneNumbersV2": "ListPhoneNumbersSummaryList",
              "SearchAvailablePhoneNumbers": "AvailableNumbersList", "ListContactFlows": "ContactFlowSummaryList",
              "ListFlowAssociations": "FlowAssociationSummaryList"}


#: The operations that bring a number to a target (a claim, a move): same token discipline, same answers.
_BRINGS_A_NUMBER = ("ClaimPhoneNumber", "UpdatePhoneNumber")


def classify(error: BaseException, operation: str = "ClaimPhoneNumber") -> Classified:
    """Sort an exception from a Connect call into retry / unavailable / terminal / fatal (DESIGN §2)."""
    if isinstance(error, botocore_errors.ClientError):
        details = error.response.get("Error", {})
        code = details.get("Code", "Unknown")
        message = details.get("Message", "") or str(error)
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _THROTTLE_CODES or status == 429:
            return Classified(Verdict.RETRY, code, message, throttled=True)
        if code in _FATAL_CODES or status == 403:
            return Classified(Verdict.FATAL, code, message)
        if code == "ResourceNotFoundException":
            # On a claim or a listing the target itself is unknown; on a describe (or an association:
            # that number or that flow), only that number.
            fatal = operation in ("ClaimPhoneNumber", "ListPhoneNumbersV2", "ListContactFlows", "ListFlowAssociations")
            return Classified(Verdict.FATAL if fatal else Verdict.TERMINAL, code, message)
        if code == "InvalidParameterException" and "not available" in message.lower():
            return Classified(Verdict.UNAVAILABLE, code, message)
        if code == "IdempotencyException" and operation in _BRINGS_A_NUMBER:
            # Our token was used before (with other parameters, or by an attempt whose answer was
            # lost): the number may be ours already. Ask, exactly as after "not available".
            return Classified(Verdict.UNAVAILABLE, code, message)
        if operation == "UpdatePhoneNumber":
            if code == "InvalidParameterException":  # maybe "already on the destination" (our move?): the
                # real wording is not known, so the engine asks DescribePhoneNumber where the number is
                return Classified(Verdict.UNAVAILABLE, code, message)
            if code == "ResourceInUseException":  # being claimed or moved right now: ask again later
                return Classified(Verdict.RETRY, code, message)
        if status >= 500:
            return Classified(Verdict.RETRY, code, message)
        return Classified(Verdict.TERMINAL, code, message)
    if isinstance(error, botocore_errors.NoCredentialsError | botocore_errors.PartialCredentialsError
                  | botocore_errors.NoRegionError | botocore_errors.ProfileNotFound
                  | botocore_errors.TokenRetrievalError | botocore_errors.SSOError):
        return Classified(Verdict.FATAL, type(error).__name__, str(error))
    if isinstance(error, IncompleteAnswer):  # may have taken effect: the same token again, then ask
        return Classified(Verdict.RETRY, "IncompleteAnswer", str(error))
    if isinstance(error, botocore_errors.ConnectTimeoutError | botocore_errors.EndpointConnectionError):
        return Classified(Verdict.RETRY, type(error).__name__, _with_reason(error), unreachable=not _dropped(error))
    if isinstance(error, ConnectionRefusedError | socket.gaierror):
        return Classified(Verdict.RETRY, type(error).__name__, str(error), unreachable=True)
    if isinstance(error, botocore_errors.HTTPClientError | botocore_errors.ReadTimeoutError
                  | aiohttp.ClientError | asyncio.TimeoutError | ConnectionError):
        return Classified(Verdict.RETRY, type(error).__name__, str(error))
    if isinstance(error, botocore_errors.ParamValidationError):
        return Classified(Verdict.TERMINAL, type(error).__name__, str(error))  # this number's parameters
    if isinstance(error, botocore_errors.BotoCoreError):
        # Anything else from botocore (credential refresh failing, ...) concerns the caller, not a
        # number: stop the run with the journal intact rather than fail numbers one by one.
        return Classified(Verdict.FATAL, type(error).__name__, str(error))
    raise error


def _dropped(error: botocore_errors.BotoCoreError) -> bool:
    """An EndpointConnectionError that aiobotocore raised for a connection reset *after* it was open
    (aiohttp's ClientOSError other than a failed connect): the request may have reached the service."""
    cause = error.kwargs.get("error")
    return isinstance(cause, aiohttp.ClientOSError) and not isinstance(cause, aiohttp.ClientConnectorError)


def _with_reason(error: botocore_errors.BotoCoreError) -> str:
    """botocore's message plus the operating system's reason ("Connection refused", a DNS error),
    which botocore leaves out: it is what a user needs to tell a wrong port from a wrong name."""
    cause = error.kwargs.get("error")
    reason = getattr(cause, "os_error", None) or cause
    errno = getattr(reason, "errno", None)
    if isinstance(errno, int) and errno > 0 and not isinstance(reason, socket.gaierror):
        text = os.strerror(errno)  # asyncio's own strerror ("Connect call failed ...") leaves out the why
    else:
        text = getattr(reason, "strerror", None) or (str(reason) if isinstance(reason, BaseException) else "")
    return f"{error} ({text})" if text and text not in str(error) else str(error)
