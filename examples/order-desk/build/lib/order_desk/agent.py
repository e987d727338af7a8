"""An order desk: one function tool that looks an order up, answering each speaker about their own orders only.

The appliance gives the LLM every user line as "speaker: text", so the model knows who asks and passes it on.
"""

from __future__ import annotations

from livekit.agents import Agent, RunContext, function_tool

ORDERS = {
    "A-1001": {"customer": "alice", "items": "2 desk lamps", "status": "shipped on 2 December"},
    "B-2002": {"customer": "bob", "items": "1 office chair", "status": "waiting for stock"},
}

INSTRUCTIONS = (
    "You work at an order desk. Several customers talk to you in one room; each user message starts with the"
    " speaker's name. When someone asks about an order, call lookup_order with the order id and that speaker's"
    " name as the customer, then answer them by name with what it returned."
)


class OrderDesk(Agent):
    def __init__(self) -> None:
        super().__init__(instructions=INSTRUCTIONS)

    @function_tool
    async def lookup_order(self, context: RunContext, order_id: str, customer: str) -> str:
        """Look up an order for the customer who asks about it.

        Args:
            order_id: The order's id, like A-1001.
            customer: The name of the person asking (the speaker of the message).
        """
        order = ORDERS.get(order_id.strip().upper())
        if order is None:
            return f"There is no order {order_id}."
        if order["customer"] != customer:
            return f"Order {order_id} is not {customer}'s: tell them you can only discuss their own orders."
        return f"Order {order_id} for {customer}: {order['items']}, {order['status']}."


def build() -> Agent:
    return OrderDesk()
