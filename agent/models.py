"""The models a room's agent uses, chosen by settings; and OfflineLLM, a deterministic model with no network.

OfflineLLM's answer proves what the agent shares: who it has heard, how many messages its context holds, and the
last thing said. It is what the appliance runs until an operator configures a real provider.
"""

from __future__ import annotations

from typing import Any

from livekit.agents import llm, stt, tts, vad
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, APIConnectOptions, NotGivenOr
from livekit.agents.utils import shortuuid

from agent.settings import ModelSettings

SPEAKER_KEY = "participant_identity"  # ChatMessage.extra key naming who said a user message


class OfflineLLM(llm.LLM[Any]):
    stream_class: type[llm.LLMStream]  # set below, once _OfflineStream is defined; tests swap in their own

    @property
    def model(self) -> str:
        return "offline-deterministic"

    @property
    def provider(self) -> str:
        return "appliance"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        return self.stream_class(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


def answer(chat_ctx: llm.ChatContext) -> str:
    """What OfflineLLM says: the speakers heard, the number of messages, and an echo of the last user message."""
    messages = [item for item in chat_ctx.items if isinstance(item, llm.ChatMessage) and item.role != "system"]
    speakers: list[str] = []
    last = ""
    for message in messages:
        if message.role != "user":
            continue
        who = str(message.extra.get(SPEAKER_KEY) or "someone")
        if who not in speakers:
            speakers.append(who)
        last = message.text_content or ""  # the session writes user content as "identity: text"
    heard = ", ".join(speakers) if speakers else "nobody yet"
    return f"[offline model] I have heard {heard}. This conversation holds {len(messages)} messages. Last: {last}"


class _OfflineStream(llm.LLMStream):
    async def _run(self) -> None:
        self._event_ch.send_nowait(
            llm.ChatChunk(
                id=shortuuid("offline_"), delta=llm.ChoiceDelta(role="assistant", content=answer(self._chat_ctx))
            )
        )


OfflineLLM.stream_class = _OfflineStream


def build_tts(settings: ModelSettings) -> tts.TTS[Any] | None:
    """The text-to-speech model, or None for text-only replies."""
    if settings.tts != "openai":
        return None
    from livekit.plugins import openai

    return openai.TTS(
        model=settings.openai_tts_model,
        voice=settings.openai_tts_voice,
        base_url=settings.openai_base_url or NOT_GIVEN,
        api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else NOT_GIVEN,
        response_format="pcm",  # raw 24 kHz samples: nothing to decode
    )


def build_stt(settings: ModelSettings) -> stt.STT[Any] | None:
    """The speech-to-text model (non-streaming: the session's VAD cuts the turns), or None for text in only."""
    if settings.stt != "openai":
        return None
    from livekit.plugins import openai

    return openai.STT(
        model=settings.openai_stt_model,
        use_realtime=False,
        base_url=settings.openai_base_url or NOT_GIVEN,
        api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else NOT_GIVEN,
    )


def load_vad(settings: ModelSettings) -> vad.VAD | None:
    """Loaded once per room process, in prewarm: the model takes a moment and some memory."""
    if settings.vad != "silero":
        return None
    from livekit.plugins import silero

    return silero.VAD.load()


def build_llm(settings: ModelSettings) -> llm.LLM[Any]:
    if settings.llm == "openai":
        from livekit.plugins import openai

        return openai.LLM(
            model=settings.openai_model,
            base_url=settings.openai_base_url or NOT_GIVEN,
            api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else NOT_GIVEN,
        )
    return OfflineLLM()
