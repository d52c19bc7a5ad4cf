"""The Connect client: built with botocore's retries off, explicit timeouts and a sized pool.

Retries happen at exactly one layer, ours (DESIGN §2): botocore's own retries would bypass the
limiter, so every client is built with ``total_max_attempts=1``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from types_aiobotocore_connect import ConnectClient

__all__ = ["ClientSettings", "client_config", "connect_client"]


@dataclass(frozen=True)
class ClientSettings:
    """Where and how to reach Connect. ``None`` means botocore's own resolution (env, profile)."""

    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    connect_timeout: float = 5.0
    #: Longer than the service's normal answer (well under a second), short enough that a stalled
    #: request is given up and retried with the same token instead of holding an in-flight slot.
    read_timeout: float = 15.0
    max_pool_connections: int = 10


def client_config(settings: ClientSettings) -> AioConfig:
    """botocore configuration with retries off: our limiter and backoff own every attempt."""
    return AioConfig(
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
    if session is None:
        session = AioSession(profile=settings.profile) if settings.profile else get_session()
    async with session.create_client(
        "connect",
        region_name=settings.region,
        endpoint_url=settings.endpoint_url,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        aws_session_token=settings.aws_session_token,
        config=client_config(settings),
    ) as client:
        yield client
