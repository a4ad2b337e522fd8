"""Fixtures of the terminal tests: a relay, a worker running terminals, a tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.fixtures import RelayFactory, Workers
from tests.terminals.helpers import Setup, start_setup


@pytest.fixture
async def clients() -> AsyncIterator[list[httpx.AsyncClient]]:
    made: list[httpx.AsyncClient] = []
    yield made
    for client in made:
        await client.aclose()


@pytest.fixture
async def setup(
    turn_relay: RelayFactory, workers: Workers, clients: list[httpx.AsyncClient]
) -> Setup:
    return await start_setup(turn_relay, workers, clients)
