"""Example workflows, served by ``steady dev`` and the Docker Compose worker.

``order`` charges a card, reserves stock and ships in parallel with a confirmation e-mail, and refunds the
charge if shipping fails for good (a compensation).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from pydantic import BaseModel

from actors import Context, Registry, TerminalError, Workflow, current_step

logger = logging.getLogger(__name__)


class OrderRequest(BaseModel):
    """What a customer ordered."""

    order_id: str
    sku: str
    quantity: int = 1
    amount_cents: int


class Charge(BaseModel):
    """A card charge."""

    charge_id: str
    amount_cents: int


class Receipt(BaseModel):
    """What the order workflow returns."""

    order_id: str
    charge_id: str
    tracking: str
    emailed: bool
    confirmed_at: str


async def charge_card(req: OrderRequest) -> Charge:
    """Charge the customer; the idempotency key makes a retried charge safe at the payment provider."""
    info = current_step()
    await asyncio.sleep(0.01)
    charge_id = "ch_" + hashlib.sha256(info.idempotency_key.encode()).hexdigest()[:12]
    return Charge(charge_id=charge_id, amount_cents=req.amount_cents)


def reserve_stock(sku: str, quantity: int) -> dict[str, int | str]:
    """Reserve stock (a sync step: it runs in the worker's thread pool)."""
    if quantity <= 0:
        raise TerminalError(f"cannot reserve {quantity} of {sku}")
    return {"sku": sku, "reserved": quantity}


async def ship(order_id: str) -> str:
    """Hand the parcel to the carrier."""
    await asyncio.sleep(0.01)
    return f"TRK-{order_id}"


async def send_email(order_id: str) -> bool:
    """Tell the customer."""
    await asyncio.sleep(0.005)
    return True


async def refund(charge: Charge) -> str:
    """Give the money back."""
    return f"re_{charge.charge_id}"


orders = Workflow("order", version="1")


@orders.main
async def order(ctx: Context, req: OrderRequest) -> Receipt:
    """Charge, reserve, then ship and e-mail in parallel; refund if the order cannot be fulfilled."""
    charge = await ctx.step("charge", charge_card, req)
    try:
        await ctx.step("reserve", reserve_stock, req.sku, req.quantity)
        tracking, emailed = await asyncio.gather(
            ctx.step("ship", ship, req.order_id), ctx.step("email", send_email, req.order_id)
        )
    except TerminalError:
        await ctx.step("refund", refund, charge)
        raise
    ctx.log.info("order %s shipped as %s", req.order_id, tracking)
    return Receipt(
        order_id=req.order_id,
        charge_id=charge.charge_id,
        tracking=tracking,
        emailed=emailed,
        confirmed_at=ctx.now().isoformat(),
    )


app = Registry([orders])
"""What ``steady worker --app streams.examples:app`` serves."""


async def fulfilment_backend(
    bootstrap: str | None = None, *, prefix: str | None = None, group: str = "fulfilment", limit: int = 0
) -> int:
    """An example backend that reacts to every finished order, in its own consumer group.

    Several copies share the work; a restarted one resumes after the last completion its group received.
    Returns how many completions it handled (it stops after ``limit`` when ``limit`` > 0).
    """
    from streams.client import Client  # noqa: PLC0415 - keeps the workflow module free of the client

    handled = 0
    async with Client(bootstrap, prefix=prefix) as client:
        async for done in client.completions(workflow_type="order", group_id=group):
            if done.status == "completed" and done.result is not None:
                receipt = Receipt.model_validate_json(done.result.data)
                logger.info("fulfilment: ship %s, tracking %s", receipt.order_id, receipt.tracking)
            else:
                logger.warning("fulfilment: order run %s ended %s: %s", done.key, done.status, done.error)
            handled += 1
            if limit and handled >= limit:
                break
    return handled


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(fulfilment_backend())
