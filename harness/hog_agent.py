"""A test-only operator agent whose model, told to "eat memory", allocates without bound: for the memory limits.

It keeps what it allocated (a leak), and when an allocation fails (the RLIMIT_DATA backstop) it says how far it
got. Any other line gets the offline model's answer.
"""

from __future__ import annotations

import asyncio

from livekit.agents import Agent, llm
from livekit.agents.utils import shortuuid

from agent.models import OfflineLLM, answer

CHUNK_MB = 16
leaked: list[bytes] = []


class _HogStream(llm.LLMStream):
    async def _run(self) -> None:
        text = answer(self._chat_ctx)
        if text.endswith("eat memory"):
            try:
                while True:
                    leaked.append(b"x" * (CHUNK_MB * 2**20))  # written, so the pages are really used
                    await asyncio.sleep(0.02)
            except MemoryError:
                text = f"[hog] allocation failed after {len(leaked) * CHUNK_MB} MB"
        self._event_ch.send_nowait(
            llm.ChatChunk(id=shortuuid("hog_"), delta=llm.ChoiceDelta(role="assistant", content=text))
        )


class HogLLM(OfflineLLM):
    stream_class = _HogStream


def build() -> Agent:
    return Agent(instructions="A test agent.", llm=HogLLM())
