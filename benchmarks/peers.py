"""The clients bulkclaim is compared with (DESIGN §7), written the way a careful user would write them.

Every client gets a :class:`Job` (where to send, which numbers, what it was told about the quota) and
a :class:`Timing` it fills in: the moment its first request leaves (a ``before-send`` hook on the
botocore client, so retries inside botocore count too) and the moment each number gets its final
answer. Attempts, 429s and executions are counted by the sandbox, the same way for every client.

- :func:`sdk_standard` / :func:`sdk_adaptive`: plain aiobotocore with botocore's own retries
  (``standard`` or ``adaptive`` mode, botocore's default 3 attempts), one ``claim_phone_number`` per
  number under an ``asyncio.Semaphore``; botocore fills in the ``ClientToken`` and reuses it on its retries.
- :func:`limiter_tenacity`: ``aiolimiter.AsyncLimiter(rate, 1)`` + ``tenacity`` (429 or 5xx, random
  exponential wait, 8 attempts), botocore retries off, one ``ClientToken`` per number on every retry.
- :func:`bare_loop`: no limiter, no retries, no journal: the ceiling of one aiobotocore client.
- :func:`neighbour`: another caller of the same account sending claims at a steady rate, no retries.

Used by ``benchmarks/compare.py``; not meant to be run on its own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from aiolimiter import AsyncLimiter
from botocore.exceptions import ClientError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential
from types_aiobotocore_connect import ConnectClient

from bulkclaim.sandbox import TEST_CREDENTIALS

__all__ = [
    "CLAIM_EVENT",
    "Job",
    "NeighbourStats",
    "Peer",
    "Timing",
    "bare_loop",
    "limiter_tenacity",
    "neighbour",
    "sdk_adaptive",
    "sdk_client",
    "sdk_standard",
]

REGION = "us-east-1"
#: botocore event fired for every ClaimPhoneNumber attempt just before it is sent, retries included.
CLAIM_EVENT = "before-send.connect.ClaimPhoneNumber"


@dataclass(frozen=True)
class Job:
    """One client run: the numbers to claim and what the client was told about the quota."""

    endpoint_url: str
    instance_id: str
    numbers: Sequence[str]
    rate: float
    burst: int
    concurrency: int


class Timing:
    """When the client's first request left and when the last number got its final answer."""

    def __init__(self) -> None:
        self.first_request: float | None = None
        self.last_answer: float | None = None

    def request_sent(self, **_: Any) -> None:
        """A botocore ``before-send`` handler: returns ``None`` so the request goes out unchanged."""
        if self.first_request is None:
            self.first_request = time.monotonic()

    def answered(self) -> None:
        self.last_answer = time.monotonic()


Peer = Callable[[Job, Timing], Awaitable[None]]


@asynccontextmanager
async def sdk_client(endpoint_url: str, retries: dict[str, Any], pool: int = 10,
                     timing: Timing | None = None) -> AsyncIterator[ConnectClient]:
    """A stock aiobotocore Connect client for the sandbox with the given ``retries`` config."""
    config = AioConfig(retries=retries, max_pool_connections=pool)
    async with get_session().create_client(
        "connect", region_name=REGION, endpoint_url=endpoint_url, config=config,
        aws_access_key_id=TEST_CREDENTIALS.access_key_id,
        aws_secret_access_key=TEST_CREDENTIALS.secret_access_key,
    ) as client:
        if timing is not None:
            client.meta.events.register(CLAIM_EVENT, timing.request_sent)
        yield client


async def _gather_claims(job: Job, timing: Timing, retries: dict[str, Any]) -> None:
    """One ``claim_phone_number`` per number, ``job.concurrency`` at a time; errors end that number."""
    semaphore = asyncio.Semaphore(job.concurrency)
    async with sdk_client(job.endpoint_url, retries, max(10, job.concurrency), timing) as client:

        async def claim(number: str) -> None:
            async with semaphore:
                try:
                    await client.claim_phone_number(InstanceId=job.instance_id, PhoneNumber=number)
                except ClientError:
                    pass  # this number failed; the sandbox's ledger tells which ones
                finally:
                    timing.answered()

        await asyncio.gather(*(claim(number) for number in job.numbers))


async def sdk_standard(job: Job, timing: Timing) -> None:
    """botocore ``standard`` retries (3 attempts, exponential backoff, retry quota)."""
    await _gather_claims(job, timing, {"mode": "standard"})


async def sdk_adaptive(job: Job, timing: Timing) -> None:
    """botocore ``adaptive`` retries: standard plus a client-side rate limiter that reacts to 429s."""
    await _gather_claims(job, timing, {"mode": "adaptive"})


def _retryable(error: BaseException) -> bool:
    if not isinstance(error, ClientError):
        return False
    code = error.response.get("Error", {}).get("Code")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return code == "ThrottlingException" or status >= 500


async def limiter_tenacity(job: Job, timing: Timing) -> None:
    """``AsyncLimiter(rate, 1)`` before every attempt, tenacity owns the retries, same token each time."""
    limiter = AsyncLimiter(job.rate, 1)
    semaphore = asyncio.Semaphore(job.concurrency)
    retries = {"total_max_attempts": 1}
    async with sdk_client(job.endpoint_url, retries, max(10, job.concurrency), timing) as client:

        async def claim(number: str) -> None:
            token = str(uuid.uuid4())
            retrying = AsyncRetrying(retry=retry_if_exception(_retryable),
                                     wait=wait_random_exponential(multiplier=0.5, max=20),
                                     stop=stop_after_attempt(8), reraise=True)
            async with semaphore:
                try:
                    async for attempt in retrying:
                        with attempt:
                            async with limiter:
                                await client.claim_phone_number(InstanceId=job.instance_id, PhoneNumber=number,
                                                                ClientToken=token)
                except ClientError:
                    pass  # out of attempts, or not retryable
                finally:
                    timing.answered()

        await asyncio.gather(*(claim(number) for number in job.numbers))


async def bare_loop(job: Job, timing: Timing) -> None:
    """The ceiling: a semaphore and the client, nothing else (no limiter, no retries, no journal)."""
    await _gather_claims(job, timing, {"total_max_attempts": 1})


@dataclass
class NeighbourStats:
    """What the neighbour saw of the shared bucket."""

    attempts: int = 0
    throttled: int = 0
    other_errors: int = 0

    @property
    def throttled_share(self) -> float:
        return self.throttled / self.attempts if self.attempts else 0.0


async def neighbour(endpoint_url: str, instance_id: str, numbers: Sequence[str], rate: float,
                    stop: asyncio.Event) -> NeighbourStats:
    """Claim ``numbers`` one by one at a steady ``rate`` (no retries: a 429 is just counted) until
    ``stop`` is set or the numbers run out; each tick uses a fresh number."""
    stats = NeighbourStats()
    async with sdk_client(endpoint_url, {"total_max_attempts": 1}) as client:
        started = time.monotonic()
        for index, number in enumerate(numbers):
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop.is_set():
                break
            stats.attempts += 1
            try:
                await client.claim_phone_number(InstanceId=instance_id, PhoneNumber=number)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") == "ThrottlingException":
                    stats.throttled += 1
                else:
                    stats.other_errors += 1
    return stats
