"""A voice agent whose providers come from its environment ([agent.env] on the appliance):

    AGENT_STT = deepgram | openai | none     (deepgram: DEEPGRAM_API_KEY; openai: OPENAI_API_KEY)
    AGENT_LLM = openai                       (OPENAI_API_KEY; OPENAI_BASE_URL for any OpenAI-compatible server)
    AGENT_TTS = cartesia | openai | none     (cartesia: CARTESIA_API_KEY)

Keys are read by the plugins themselves from the environment; put them in secrets.toml with
`appliance agent env set NAME` (value on standard input).
"""

from __future__ import annotations

import os

from livekit.agents import Agent, llm, stt, tts, vad

INSTRUCTIONS = (
    "You are a voice assistant in a room where several people talk. Each user message starts with the speaker's"
    " name. Answer briefly, in plain sentences that sound natural when spoken."
)


def choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = os.environ.get(name, default).strip().lower()
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: choose one of {', '.join(allowed)}")
    return value


def build_stt() -> stt.STT | None:
    provider = choice("AGENT_STT", "deepgram", ("deepgram", "openai", "none"))
    if provider == "deepgram":
        from livekit.plugins import deepgram

        return deepgram.STT(model=os.environ.get("DEEPGRAM_MODEL", "nova-3"))
    if provider == "openai":
        from livekit.plugins import openai

        return openai.STT(model=os.environ.get("OPENAI_STT_MODEL", "gpt-4o-mini-transcribe"), use_realtime=False)
    return None


def build_llm() -> llm.LLM:
    choice("AGENT_LLM", "openai", ("openai",))
    from livekit.plugins import openai

    return openai.LLM(model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"))


def build_tts() -> tts.TTS | None:
    provider = choice("AGENT_TTS", "cartesia", ("cartesia", "openai", "none"))
    if provider == "cartesia":
        from livekit.plugins import cartesia

        return cartesia.TTS()
    if provider == "openai":
        from livekit.plugins import openai

        return openai.TTS(model=os.environ.get("OPENAI_TTS_MODEL", "gpt-4o-mini-tts"), response_format="pcm")
    return None


def build_vad(speech_to_text: stt.STT | None) -> vad.VAD | None:
    """A non-streaming STT (openai's) needs a VAD to tell where a turn ends; deepgram streams and finds it."""
    if speech_to_text is None or speech_to_text.capabilities.streaming:
        return None
    from livekit.plugins import silero

    return silero.VAD.load()


def build() -> Agent:
    speech_to_text = build_stt()
    return Agent(
        instructions=INSTRUCTIONS,
        stt=speech_to_text,
        llm=build_llm(),
        tts=build_tts(),
        vad=build_vad(speech_to_text),
    )
