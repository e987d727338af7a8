"""The sample agent the appliance ships: what an operator's ``worker.agent`` factory looks like."""

from __future__ import annotations

from livekit.agents import Agent

INSTRUCTIONS = (
    "You are a helpful assistant in a room where several people talk to you at once. Each user message starts "
    "with the speaker's name; answer the conversation, not one person, and address people by name."
)


def build() -> Agent:
    return Agent(instructions=INSTRUCTIONS)
