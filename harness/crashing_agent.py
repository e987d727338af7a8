"""A test-only operator agent whose factory raises: an entry point that fails must count as a crash."""

from __future__ import annotations

from livekit.agents import Agent


def build() -> Agent:
    raise RuntimeError("this agent cannot start")
