from __future__ import annotations

import pytest
from hypothesis import settings

from tests.postgres import postgres
from tests.support import FakeClock

__all__ = ["postgres"]  # the throwaway PostgreSQL server, for every test module that asks for it

# The same examples on every run: a CI failure can be reproduced, and a green run means the same
# thing each time. (Property tests still explore widely: their examples are drawn from a fixed seed.)
settings.register_profile("deterministic", derandomize=True)
settings.load_profile("deterministic")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
