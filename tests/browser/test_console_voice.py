"""Voice through the console: the browser's (fake) microphone plays espeak-ng's speech; the agent's STT (the fake
OpenAI-compatible server) receives that speech from the browser's participant, as long and as loud as spoken, and
the page plays the agent's spoken (non-silent) reply."""

from __future__ import annotations

import shutil
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from harness.appliance import InstalledAppliance
from harness.browser import Person, chromium
from harness.fake_openai import FakeOpenAI, in_thread
from harness.servers import wait_until
from tests.browser.conftest import PASSWORD, console_url
from tests.browser.test_console_page import log_in_and_join

# Records, in the page, the loudest sample of the agent's audio track (Web Audio, from when it is attached).
LISTEN = """() => {
  const el = [...document.querySelectorAll("audio")].find((a) => a.srcObject);
  const context = new AudioContext();
  const analyser = context.createAnalyser();
  context.createMediaStreamSource(el.srcObject).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  window.agentPeak = 0;
  setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    for (const v of samples) window.agentPeak = Math.max(window.agentPeak, Math.abs(v));
  }, 20);
}"""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with in_thread("sk-browser-voice") as server:
        yield server


@pytest.fixture(scope="module")
def voice_box(fake: FakeOpenAI) -> Iterator[InstalledAppliance]:
    installed = InstalledAppliance()
    installed.use_models(fake, stt="openai", vad="silero", tts="openai")
    try:
        installed.install()
        installed.run("console", "passwd", stdin=PASSWORD)
        yield installed
    finally:
        installed.close()


def test_speech_from_the_browser_reaches_the_stt_and_the_agent_answers_aloud(
    voice_box: InstalledAppliance, fake: FakeOpenAI, tmp_path: Path
) -> None:
    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng (a Debian package, which scripts/test installs) makes the speech"
    speech = tmp_path / "speech.wav"
    subprocess.run([espeak, "-w", str(speech), "hello agent, this is carol speaking into the console"], check=True)
    with wave.open(str(speech)) as wav:
        spoken_s = wav.getnframes() / wav.getframerate()
    with chromium(microphone=speech) as browser:
        carol = Person(browser)
        page = carol.page
        log_in_and_join(carol, console_url(voice_box), "voice-room", "carol")
        expect(page.locator("#transcript li.agent").first).to_contain_text("Hello!", timeout=30_000)
        page.wait_for_selector("audio", state="attached", timeout=20_000)
        page.evaluate(LISTEN)
        page.click("#mic")
        expect(page.locator("#mic")).to_have_attribute("aria-pressed", "true")
        wait_until(lambda: bool(fake.heard), 40, "the STT asked to transcribe the browser's speech")
        heard = fake.heard[0]
        print(f"spoken {spoken_s:.2f} s; the STT got {heard.seconds:.2f} s at RMS {heard.rms:.0f}")
        assert abs(heard.seconds - spoken_s) <= 0.25 * spoken_s, (heard, spoken_s)
        assert heard.rms > 300, heard  # speech, not silence
        # The turn is carol's (the page shows the transcript under her name), and the agent answers it aloud.
        expect(page.locator("#transcript li.human[data-identity=carol]", has_text=fake.transcript)).to_be_visible(
            timeout=20_000
        )
        expect(page.locator("#transcript li.agent", has_text="heard: carol: this came in as speech")).to_be_visible(
            timeout=30_000
        )
        wait_until(lambda: page.evaluate("window.agentPeak") > 0.05, 20, "the agent's voice heard in the page")
        print(f"the agent's voice in the page: peak {page.evaluate('window.agentPeak'):.2f} (full scale 1)")
        assert carol.hosts == {"127.0.0.1"}, carol.hosts
        carol.close()
