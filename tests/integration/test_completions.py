"""Completions as a product: filtered streams and a backend in its own consumer group."""

from __future__ import annotations

import asyncio

import pytest

from streams.client import Client
from streams.examples import OrderRequest, fulfilment_backend, orders
from streams.examples import app as examples
from streams.settings import Settings
from tests.support import running_worker
from tests.workflows import Greeting, chain, failures

pytestmark = pytest.mark.integration


async def test_completions_can_be_filtered_by_type_and_status(worker: object, client: Client) -> None:
    seen: list[tuple[str, str]] = []

    async def follow() -> None:
        async for done in client.completions(status="failed", from_beginning=True):
            seen.append((done.workflow_id, done.workflow_type))
            return

    follower = asyncio.create_task(follow())
    await client.start(chain, Greeting(name="ok"), id="fine")
    await client.start(failures, "uncaught", id="broken")
    await asyncio.wait_for(follower, 60)

    assert [("broken", "failures")] == seen


async def test_an_example_backend_consumes_completions_in_its_own_group(settings: Settings) -> None:
    async with running_worker(examples, settings), Client(settings.bootstrap, prefix=settings.prefix) as client:
        handle = await client.start(orders, OrderRequest(order_id="b1", sku="pen", amount_cents=250), id="b1")
        await handle.result(timeout=60)
        handled = await asyncio.wait_for(
            fulfilment_backend(settings.bootstrap, prefix=settings.prefix, group=f"{settings.prefix}ful", limit=1), 60
        )
        assert 1 == handled
