"""``appliance chat``: a terminal client that talks to the agent, and says clearly when it cannot."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from agent.settings import AgentSettings, LiveKitSettings
from harness.processes import WorkerProcess, settings_env
from harness.servers import free_port


def appliance(settings: AgentSettings, workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = settings_env(settings, workdir / "cli-config")
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_chat_script_round_trip(worker: WorkerProcess, e2e_settings: AgentSettings, tmp_path: Path) -> None:
    script = tmp_path / "lines.txt"
    script.write_text("hello there\n\nhow many messages now?\n")
    done = appliance(e2e_settings, tmp_path, "chat", "cli-room", "--identity", "carol", "--script", str(script))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"agent: {e2e_settings.worker.greeting}"
    assert lines[1:3] == [
        "carol: hello there",
        "agent: [offline model] I have heard carol. This conversation holds 2 messages. Last: carol: hello there",
    ]
    assert lines[3] == "carol: how many messages now?"
    assert "holds 4 messages" in lines[4]


def test_a_second_person_joins_a_room_whose_agent_is_there(
    worker: WorkerProcess, e2e_settings: AgentSettings, tmp_path: Path
) -> None:
    """The agent greets a room once; whoever joins later is answered without a greeting of their own (seen in
    the container tests: ``appliance chat`` waited for a greeting that never came, and said no agent answered)."""
    with subprocess.Popen(  # stays in the room while the second one talks
        [sys.executable, "-m", "appliance.cli", "chat", "shared-room", "--identity", "dave"],
        env=settings_env(e2e_settings, tmp_path / "first-config"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as first:
        try:
            assert first.stdout is not None
            assert first.stdout.readline() == f"agent: {e2e_settings.worker.greeting}\n"  # the agent is there
            script = tmp_path / "erin.txt"
            script.write_text("hello, I came later\n")
            done = appliance(
                e2e_settings, tmp_path, "chat", "shared-room", "--identity", "erin", "--script", str(script)
            )
            assert done.returncode == 0, done.stderr
            assert done.stderr == "(joined shared-room, where its agent already is)\n"
            assert done.stdout.splitlines() == [
                "erin: hello, I came later",
                "agent: [offline model] I have heard erin. This conversation holds 2 messages. Last: erin: hello,"
                " I came later",
            ]
        finally:
            first.kill()


def test_chat_says_clearly_when_livekit_is_unreachable(e2e_settings: AgentSettings, tmp_path: Path) -> None:
    nowhere = e2e_settings.livekit.model_copy(update={"url": f"ws://127.0.0.1:{free_port()}"})
    done = appliance(
        e2e_settings.model_copy(update={"livekit": nowhere}), tmp_path, "chat", "r", "--script", "/dev/null"
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: cannot join r at ws://127.0.0.1:")


def test_chat_says_clearly_when_the_keys_are_wrong(e2e_settings: AgentSettings, tmp_path: Path) -> None:
    wrong = LiveKitSettings(url=e2e_settings.livekit.url, api_key="nope", api_secret="x" * 40)
    done = appliance(e2e_settings.model_copy(update={"livekit": wrong}), tmp_path, "chat", "r", "--script", "/dev/null")
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot join r") and "api_key" in done.stderr
    assert "x" * 40 not in done.stderr + done.stdout


def test_chat_shows_a_refused_line_as_one_error_and_goes_on(
    worker: WorkerProcess, e2e_settings: AgentSettings, tmp_path: Path
) -> None:
    script = tmp_path / "lines.txt"
    script.write_text("bad\x00line\nstill here?\n")
    done = appliance(e2e_settings, tmp_path, "chat", "cli-refused", "--identity", "dave", "--script", str(script))
    assert done.returncode == 1
    refusal = "error: not stored: content: contains NUL (\\x00) at offset 3, which PostgreSQL cannot store"
    assert done.stderr == refusal + "\n"
    lines = done.stdout.splitlines()
    assert lines[1] == "dave: still here?"
    assert "holds 2 messages" in lines[2]  # the greeting and this line: the refused one was not answered either


def test_chat_says_when_the_agent_died_and_is_dispatched_again(
    worker: WorkerProcess, e2e_settings: AgentSettings, tmp_path: Path
) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "chat", "chat-crash-room", "--identity", "fay"],
        env=settings_env(e2e_settings, tmp_path / "cli-config"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as chat:
        watchdog = threading.Timer(90, chat.kill)  # a line that never comes ends the reads below with ""
        watchdog.start()
        try:
            assert chat.stdout is not None and chat.stderr is not None
            assert chat.stdout.readline() == f"agent: {e2e_settings.worker.greeting}\n"
            pid = next(r["pid"] for r in worker.status()["rooms"] if r["room"] == "chat-crash-room")
            os.kill(pid, signal.SIGKILL)
            told = chat.stderr.readline()
            assert re.fullmatch(
                r"\(the agent agent-AJ_\w+ died \(killed\): the appliance is dispatching it again\)\n", told
            )
            assert chat.stdout.readline() == f"agent: {e2e_settings.worker.resume_greeting}\n"
        finally:
            watchdog.cancel()
            chat.kill()
