"""A room's session: runs in the room's own process and serves every participant of the room.

It wraps the operator's agent with the conversation store (every item written as it happens, never only at
shutdown), resume (the last messages restored into the agent's context), and text input from everyone in the
room (livekit's default text input listens to one participant only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from livekit import rtc
from livekit.agents import NOT_GIVEN, Agent, AgentSession, JobContext, llm
from livekit.agents.utils import is_given
from livekit.agents.voice import SpeechHandle, room_io
from livekit.agents.voice.events import ConversationItemAddedEvent, FunctionToolsExecutedEvent
from prometheus_client import Histogram

from agent import metrics
from agent.history import STORED_KEY, restore, to_chat_message, tool_records
from agent.limits import apply_memory_backstop
from agent.models import SPEAKER_KEY, build_llm, build_stt, build_tts
from agent.settings import AgentSettings
from agent.store.records import InvalidMessage
from agent.store.store import Conversation, ConversationStore, StoreUnavailable
from agent.topics import ACK_TOPIC, CHAT_TOPIC

log = logging.getLogger("agent.session")
RAW_KEY = "spoken_text"  # ChatMessage.extra key: a transcribed turn's text, before we named its speaker
EXIT_CRASHED = 70  # sysexits' EX_SOFTWARE


def conversation_id_from(metadata: str) -> str | None:
    """A `conversation_id` named in the room's metadata (JSON), if any."""
    try:
        value = json.loads(metadata) if metadata else {}
    except json.JSONDecodeError:
        return None
    found = value.get("conversation_id") if isinstance(value, dict) else None
    return found if isinstance(found, str) and found else None


class RoomSession:
    def __init__(self, ctx: JobContext, settings: AgentSettings, store: ConversationStore, conv: Conversation) -> None:
        self.ctx = ctx
        self.settings = settings
        self.store = store
        self.conv = conv
        self.voice = build_tts(settings.models)
        self.ears = build_stt(settings.models)
        self.session: AgentSession[Any] = AgentSession(
            llm=build_llm(settings.models),
            tts=self.voice or NOT_GIVEN,
            stt=self.ears or NOT_GIVEN,
            vad=ctx.proc.userdata.get("vad") or NOT_GIVEN,
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._departure: asyncio.TimerHandle | None = None
        self.ended = False
        self.last_speaker = ""  # who spoke last: the speaker a tool call is stored under

    async def start(self, agent: Agent, started: float) -> None:
        """``started``: when this process took the room's job (perf_counter), for the greeting's latency.

        Audio goes in and out when the appliance's models ([models]) or the operator's agent itself has an STT
        or a TTS (an agent's own models win over the session's)."""
        await agent.update_chat_ctx(llm.ChatContext(restore(self.conv.window)))
        self._name_spoken_turns(agent)
        self.session.on("conversation_item_added", self._on_item_added)
        self.session.on("function_tools_executed", self._on_tools_executed)
        room = self.ctx.room
        room.register_text_stream_handler(CHAT_TOPIC, self._on_chat)
        room.on("participant_connected", self._on_participant_connected)
        room.on("participant_disconnected", self._on_participant_disconnected)
        await self.session.start(
            agent,
            room=room,
            room_options=room_io.RoomOptions(
                text_input=False,  # replaced by _on_chat, which listens to everyone
                audio_input=_given(agent.stt, self.ears),  # the linked participant's voice, when there is an STT
                audio_output=_given(agent.tts, self.voice),  # replies are spoken too, when there is a TTS
                close_on_disconnect=False,  # the room, not one participant, decides when we are done
            ),
            record=False,
        )
        # Front ends (the console) tell people whether the agent carries on a conversation or starts one.
        await room.local_participant.set_attributes(
            {"appliance.resumed": "true" if self.conv.resumed_from else "false"}
        )
        greeting = self.settings.worker.resume_greeting if self.conv.resumed_from else self.settings.worker.greeting
        _time_to(self.session.say(greeting), metrics.room().greeting, started)
        metrics.room().participants.set(len(self._humans()))
        if not self._humans():
            self._schedule_departure()

    def _name_spoken_turns(self, agent: Agent) -> None:
        """A transcribed turn reaches the LLM as "identity: text", like a typed one, through livekit's hook for
        editing a user turn; the operator's own hook still runs after ours."""
        operator_hook = agent.on_user_turn_completed

        async def name_the_speaker(turn_ctx: llm.ChatContext, new_message: llm.ChatMessage) -> None:
            if STORED_KEY not in new_message.extra:  # typed lines are named (and stored) on arrival
                linked = self.session.room_io.linked_participant
                speaker = linked.identity if linked else ""
                raw = new_message.text_content or ""
                new_message.extra |= {SPEAKER_KEY: speaker, RAW_KEY: raw}
                self.last_speaker = speaker
                new_message.content = [f"{speaker}: {raw}"]
            await operator_hook(turn_ctx, new_message)

        agent.on_user_turn_completed = name_the_speaker  # type: ignore[method-assign]

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_chat(self, reader: rtc.TextStreamReader, identity: str) -> None:
        self._spawn(self._chat(reader, identity), f"chat from {identity}")

    async def _chat(self, reader: rtc.TextStreamReader, identity: str) -> None:
        stream_id = reader.info.stream_id
        try:
            message = await self.conv.append("user", identity, await reader.read_all())
        except (InvalidMessage, StoreUnavailable) as exc:
            # Refused as sent (never altered, so what is stored is exactly what was sent): the sender is told why.
            log.warning("message from %s not stored: %s", identity, exc)
            await self._ack(identity, {"stream_id": stream_id, "error": str(exc)})
            return
        stored = time.perf_counter()
        self.last_speaker = identity
        await self._ack(identity, {"stream_id": stream_id, "message_id": message.id})
        _time_to(self.session.generate_reply(user_input=to_chat_message(message)), metrics.room().reply, stored)

    async def _ack(self, identity: str, ack: dict[str, str]) -> None:
        with contextlib.suppress(Exception):  # the sender may have left; what was stored stays stored
            await self.ctx.room.local_participant.send_text(
                json.dumps(ack), topic=ACK_TOPIC, destination_identities=[identity]
            )

    def _on_item_added(self, event: ConversationItemAddedEvent) -> None:
        item = event.item
        if not isinstance(item, llm.ChatMessage) or STORED_KEY in item.extra:
            return  # handoffs and function calls are not messages; user messages are stored on arrival
        content = str(item.extra.get(RAW_KEY, item.text_content or ""))
        self._spawn(self._store_item(item.role, self._speaker(item), content), "store item")
        self._spawn(self._trim_context(), "trim context")

    def _on_tools_executed(self, event: FunctionToolsExecutedEvent) -> None:
        """Each call and its output, stored in that order as two ``tool`` messages (agent/history.py), under the
        speaker whose turn the tool answered (the last one heard)."""
        limit = self.settings.store.max_content_bytes
        records = [r for call, output in event.zipped() for r in tool_records(call, output, limit)]
        self._spawn(self._store_tools(self.last_speaker, records), "store tool calls")

    async def _store_tools(self, speaker: str, records: list[tuple[str, dict[str, Any]]]) -> None:
        for content, metadata in records:
            try:
                await self.conv.append("tool", speaker, content, metadata)
            except (InvalidMessage, StoreUnavailable) as exc:
                log.error("tool %s %s not stored: %s", metadata["name"], metadata["tool"], exc)

    def _speaker(self, item: llm.ChatMessage) -> str:
        """Who said an item the session produced: the agent, or for a transcribed turn the linked participant."""
        if item.role == "user":
            if SPEAKER_KEY in item.extra:
                return str(item.extra[SPEAKER_KEY])
            linked = self.session.room_io.linked_participant
            return linked.identity if linked else ""
        return self.ctx.room.local_participant.identity

    async def _store_item(self, role: str, identity: str, content: str) -> None:
        try:
            await self.conv.append(role, identity, content)
        except (InvalidMessage, StoreUnavailable) as exc:
            log.error("%s message not stored: %s", role, exc)

    async def _trim_context(self) -> None:
        """Keep the agent's context to the window; the store has the rest."""
        agent = self.session.current_agent
        window = self.settings.store.window_size
        if len(agent.chat_ctx.items) > window:
            await agent.update_chat_ctx(agent.chat_ctx.copy().truncate(max_items=window))

    def _humans(self) -> list[rtc.RemoteParticipant]:
        agent_kind = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        return [p for p in self.ctx.room.remote_participants.values() if p.kind != agent_kind]

    def _on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        metrics.room().participants.set(len(self._humans()))
        if self._departure is not None:
            self._departure.cancel()
            self._departure = None

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        metrics.room().participants.set(len(self._humans()))
        if not self._humans():
            self._schedule_departure()

    def _schedule_departure(self) -> None:
        if self._departure is None:
            loop = asyncio.get_running_loop()
            self._departure = loop.call_later(self.settings.worker.departure_timeout_s, self._depart)

    def _depart(self) -> None:
        if not self._humans():
            self.ended = True
            self.ctx.shutdown(reason="the last participant left")

    async def aclose(self, reason: str) -> None:
        """Job shutdown: flush pending writes, then mark the conversation ended (everyone left) or interrupted
        (drain timeout, worker stopping: the next process for this room resumes it)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info("room %s closing (%s)", self.ctx.room.name, reason)
        metrics.room().participants.set(0)
        with contextlib.suppress(StoreUnavailable):
            await self.conv.close("ended" if self.ended else "interrupted")
        await self.store.aclose()


def _given(own: object, session_model: object) -> bool:
    """Whether a model is there: the agent's own when it set one (None included: it wants none), else the
    session's."""
    return own is not None if is_given(own) else session_model is not None


def _time_to(speech: SpeechHandle, histogram: Histogram, since: float) -> None:
    """Observe, once the speech is sent, the time since ``since``; an interrupted one was never sent whole."""

    def done(handle: SpeechHandle) -> None:
        if not handle.interrupted:
            histogram.observe(time.perf_counter() - since)

    speech.add_done_callback(done)


async def entrypoint(ctx: JobContext) -> None:
    """The job's entry point, in the room's process (forked from the prewarmed pool).

    livekit ends a process whose entry point raised with exit code 0, which nothing can tell from a room that
    ended; we exit non-zero instead, so the worker counts the crash and dispatches the room again.
    """
    try:
        await _start_room(ctx)
    except Exception:
        # Straight to stderr: log records travel to the worker through a queue that os._exit would cut short.
        print(
            f"ERROR agent.session: room {ctx.room.name}: the session failed to start; exiting as a crash",
            file=sys.stderr,
        )
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(EXIT_CRASHED)


async def _start_room(ctx: JobContext) -> None:
    started = time.perf_counter()
    settings: AgentSettings = ctx.proc.userdata["settings"]
    factory: Callable[[], Agent] = ctx.proc.userdata["factory"]
    await ctx.connect()
    store = ConversationStore(settings)
    await store.start()
    conv = await store.open(ctx.room.name, conversation_id_from(ctx.room.metadata))
    room_session = RoomSession(ctx, settings, store, conv)
    ctx.add_shutdown_callback(room_session.aclose)
    await room_session.start(factory(), started)
    apply_memory_backstop(settings.worker.job_memory_limit_mb)  # measured now that the room is connected
