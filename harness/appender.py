"""A producer process for concurrency tests: opens a conversation, appends N messages, prints their ids."""

from __future__ import annotations

import argparse
import asyncio

from agent.settings import AgentSettings, load_settings
from agent.store.store import ConversationStore


async def run(room: str, conversation_id: str | None, count: int, identity: str) -> list[str]:
    async with ConversationStore(load_settings(AgentSettings)) as store:
        conv = await store.open(room, conversation_id)
        return [(await conv.append("user", identity, f"{identity} says {i}")).id for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--room", required=True)
    parser.add_argument("--conversation-id")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--identity", required=True)
    args = parser.parse_args()
    for message_id in asyncio.run(run(args.room, args.conversation_id, args.count, args.identity)):
        print(message_id)


if __name__ == "__main__":
    main()
