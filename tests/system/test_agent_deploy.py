"""`appliance agent`: an operator's agent project installed (offline, from the tests' wheelhouse), talked to over
the appliance's LiveKit, rolled back and removed; bad agents change nothing; its keys reach only the worker.

The LLM is the local fake OpenAI server, in a thread (the CLI blocks the test while it serves).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from appliance.service import running_worker
from harness.appliance import EXAMPLES, REPO, WHEELHOUSE, InstalledAppliance
from harness.fake_openai import FakeOpenAI, in_thread, order_questions
from tests.system.conftest import Join

AGENT_KEY = "sk-agent-env-9f3a7c-never-shown"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    """The box's own LLM ([models]), which the order desk uses."""
    with in_thread("sk-box-models") as server:
        server.tool_script = order_questions
        yield server


@pytest.fixture(scope="module")
def box(fake: FakeOpenAI) -> Iterator[InstalledAppliance]:
    installed = InstalledAppliance()
    installed.use_models(fake, openai_model="box-1")
    try:
        installed.install()
        yield installed
    finally:
        installed.close()


def install_agent(box: InstalledAppliance, source: Path, *, check: bool = True) -> Any:
    return box.run("agent", "install", str(source), "--no-index", "--find-links", str(WHEELHOUSE), check=check,
                   timeout=600)  # fmt: skip


def agent_status(box: InstalledAppliance) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(box.run("agent", "status", "--json").stdout)
    return result


def ensure(box: InstalledAppliance, *names: str) -> None:
    """The examples ``names`` installed in that order, unless the last one runs already."""
    if agent_status(box)["agent"]["name"] != names[-1]:
        for name in names:
            install_agent(box, EXAMPLES / name)


async def test_the_order_desk_installs_and_its_tool_answers_each_speaker(box: InstalledAppliance, join: Join) -> None:
    started = time.monotonic()
    result = install_agent(box, EXAMPLES / "order-desk")
    assert re.search(r"installed order-desk 1\.0\.0 \(order_desk\.agent:build\)", result.stderr), result.stderr
    alice = await join(box, "desk", "alice")
    await alice.greeting()
    print(f"agent install to the new agent's first greeting: {time.monotonic() - started:.1f} s")
    status = agent_status(box)
    agent, previous = status["agent"], status["previous"]
    assert (agent["name"], agent["version"], agent["factory"]) == ("order-desk", "1.0.0", "order_desk.agent:build")
    assert agent["source"] == str(EXAMPLES / "order-desk") and agent["installed_at"]
    assert previous["name"] == "sample"
    shown = box.run("status", check=False).stdout
    assert "agent:    order-desk 1.0.0 (order_desk.agent:build)" in shown.splitlines(), shown
    assert box.settings.worker.agent_path == Path(agent["directory"]) / "site"
    # Its wheels are kept, to install it again offline.
    assert {p.name.split("-")[0] for p in (Path(agent["directory"]) / "wheels").glob("*.whl")} == {"order_desk"}

    await alice.send("where is my order A-1001?")
    answer = await alice.reply_containing("said:", 30)
    assert answer.endswith("said: Order A-1001 for alice: 2 desk lamps, shipped on 2 December."), answer
    bob = await join(box, "desk", "bob")
    await bob.send("and what about order A-1001?")
    assert "is not bob's" in await bob.reply_containing("A-1001 is not", 30)


def bad_project(tmp_path: Path, name: str, module: str, dependencies: tuple[str, ...] = ()) -> Path:
    root = tmp_path / name
    package = root / name.replace("-", "_")
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "agent.py").write_text(module)
    (root / "pyproject.toml").write_text(
        f'[project]\nname = "{name}"\nversion = "0.1"\ndependencies = {json.dumps(list(dependencies))}\n'
        f'[project.entry-points."livekit.appliance"]\nagent = "{package.name}.agent:build"\n'
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
    )
    return root


def snapshot(box: InstalledAppliance) -> dict[str, Any]:
    """What a failed install must leave as it was."""
    venv = box.venv / "lib"
    return {
        "config": box.config_file.read_bytes(),
        "secrets": (box.etc / "secrets.toml").read_bytes(),
        "worker": {p.name: p.pid for p in box.supervisor().processes() if p.name.startswith("worker")},
        "agents": sorted(p.name for p in (box.layout.data_dir / "agents").iterdir()),
        "venv": sorted(str(p.relative_to(venv)) for p in venv.glob("python3*/site-packages/*")),
        "status": agent_status(box),
    }


@pytest.mark.parametrize(
    ("name", "module", "dependencies", "error"),
    [
        ("raises-on-import", "raise RuntimeError('broken on import')\n", (), "RuntimeError: broken on import"),
        ("factory-raises", "def build():\n    raise ValueError('no key configured')\n", (),
         "ValueError: no key configured"),
        ("not-an-agent", "def build():\n    return 42\n", (), "returned int, not a livekit Agent"),
        ("old-aiohttp", "def build():\n    pass\n", ("aiohttp<3.10",),
         r"conflict: old-aiohttp 0\.1 depends on aiohttp<3\.10, but the appliance has aiohttp==[\d.]+"),
        ("syntax-error", "def build(:\n", (), "SyntaxError"),
    ],
)  # fmt: skip
def test_a_bad_agent_changes_nothing(
    box: InstalledAppliance, tmp_path: Path, name: str, module: str, dependencies: tuple[str, ...], error: str
) -> None:
    ensure(box, "order-desk")
    before = snapshot(box)
    result = install_agent(box, bad_project(tmp_path, name, module, dependencies), check=False)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(error, errors[0]) and errors[0].endswith("nothing changed"), result.stderr
    assert snapshot(box) == before


def test_a_package_named_like_the_appliances_own_is_refused(box: InstalledAppliance, tmp_path: Path) -> None:
    ensure(box, "order-desk")
    before = snapshot(box)
    project = bad_project(tmp_path, "shadow", "")
    (project / "shadow").rename(project / "agent")
    (project / "agent" / "agent.py").write_text("def build():\n    pass\n")
    (project / "pyproject.toml").write_text(
        (project / "pyproject.toml").read_text().replace("shadow.agent:build", "agent.agent:build")
    )
    result = install_agent(box, project, check=False)
    assert "the agent's module 'agent' has the name of one the appliance has" in result.stderr, result.stderr
    assert snapshot(box) == before


async def test_the_voice_pipeline_takes_its_providers_and_keys_from_agent_env(
    box: InstalledAppliance, join: Join
) -> None:
    ensure(box, "order-desk")
    with in_thread(AGENT_KEY) as provider:
        for name, value in (("OPENAI_BASE_URL", provider.base_url), ("AGENT_TTS", "openai"), ("OPENAI_MODEL", "p-1")):
            box.run("agent", "env", "set", "--plain", "--no-restart", name, stdin=value)
        box.run("agent", "env", "set", "--plain", "--no-restart", "AGENT_STT", stdin="deepgram")
        # Deepgram chosen by the environment, without its key: the check builds the agent and says so.
        refused = install_agent(box, EXAMPLES / "voice-pipeline", check=False)
        assert refused.returncode == 1 and "DEEPGRAM_API_KEY" in refused.stderr, refused.stderr
        assert agent_status(box)["agent"]["name"] == "order-desk"
        box.run("agent", "env", "set", "--plain", "--no-restart", "AGENT_STT", stdin="none")
        box.run("agent", "env", "set", "--no-restart", "OPENAI_API_KEY", stdin=AGENT_KEY + "\n")
        install_agent(box, EXAMPLES / "voice-pipeline")
        assert agent_status(box)["agent"]["name"] == "voice-pipeline"

        carol = await join(box, "voice", "carol")
        await carol.greeting()
        await carol.send("hello pipeline")
        assert await carol.reply_containing("heard: carol: hello pipeline", 30) == (
            "fake-openai (p-1) heard: carol: hello pipeline"
        )  # from the provider [agent.env] named, with the key it holds
        assert provider.unauthorized == 0
        assert any("hello pipeline" in text for text in provider.spoken)  # and spoken by the agent's own TTS

        # The key: masked wherever settings are shown, in no log and on no command line, and in the environment
        # of the worker's processes only.
        shown = box.run("config", "show", "--json").stdout
        assert json.loads(shown)["agent"]["secret_env"] == {"OPENAI_API_KEY": "**********"}
        listed = box.run("agent", "env", "list", "--json").stdout
        assert json.loads(listed)["secret_env"] == {"OPENAI_API_KEY": "**********"}
        for output in (shown, listed, box.run("status", "--json", check=False).stdout):
            assert AGENT_KEY not in output
        logs = [p for p in box.layout.log_dir.rglob("*") if p.is_file()]
        assert logs and not [p for p in logs if AGENT_KEY.encode() in p.read_bytes()]
        holders = processes_holding(box, AGENT_KEY)
        worker = psutil.Process(box.pid(str(running_worker(box.supervisor()))))
        family = {worker.pid, *(c.pid for c in worker.children(recursive=True))}
        assert holders and holders <= family, (holders, family)


def processes_holding(box: InstalledAppliance, secret: str) -> set[int]:
    """The appliance's processes with ``secret`` in their environment; none may have it on its command line."""
    found = set()
    for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
        cmdline = proc.info["cmdline"] or []
        environ = proc.info["environ"] or {}
        if not any(str(box.prefix) in part for part in cmdline) and environ.get("APPLIANCE_CONFIG") != str(
            box.config_file
        ):
            continue
        assert not any(secret in part for part in cmdline), cmdline
        if secret in environ.values():
            found.add(proc.info["pid"])
    return found


async def test_rollback_and_remove(box: InstalledAppliance, join: Join) -> None:
    ensure(box, "order-desk", "voice-pipeline")
    box.run("agent", "rollback")
    status = agent_status(box)
    assert (status["agent"]["name"], status["previous"]["name"]) == ("order-desk", "voice-pipeline")
    alice = await join(box, "after-rollback", "alice")
    await alice.greeting()
    await alice.send("where is order B-2002?")
    assert "is not alice's" in await alice.reply_containing("said:", 30)

    box.run("agent", "remove")
    status = agent_status(box)
    assert (status["agent"]["name"], status["previous"]["name"]) == ("sample", "order-desk")
    assert box.settings.worker.agent_path is None
    dave = await join(box, "after-remove", "dave")
    await dave.greeting()
    await dave.send("where is order A-1001?")  # the sample offers no tool: the model answers in words
    assert await dave.reply_containing("heard", 30) == "fake-openai (box-1) heard: dave: where is order A-1001?"

    assert "the sample agent runs already" in box.run("agent", "remove", check=False).stderr
    box.run("agent", "rollback")
    assert agent_status(box)["agent"]["name"] == "order-desk"


def test_the_readmes_deploy_your_agent_block_as_written(
    box: InstalledAppliance, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """README, "Deploy your agent": its commands in a shell, on this box (pip offline through its environment)."""
    section = (REPO / "README.md").read_text().split("## Deploy your agent", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    preamble = (
        "set -euo pipefail\n"
        'sudo() { "$@"; }\n'  # the tests run as root
        f'export PATH="{box.venv / "bin"}:$PATH" PIP_NO_INDEX=1 PIP_FIND_LINKS="{WHEELHOUSE}"\n'
    )
    env = box.env | {"HOME": str(tmp_path)}
    done = subprocess.run(["bash", "-c", preamble + block], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not [line for line in done.stderr.splitlines() if line.startswith("error")], done.stderr
    assert re.search(
        r"installed my-agent 0\.1\.0 \(my_agent\.agent:build\) in \S+/agents/my-agent-0\.1\.0-", done.stderr
    )
    assert 'name = "my-agent"' in done.stdout and 'factory = "my_agent.agent:build"' in done.stdout
    assert "heard: " in done.stdout and "hello, are you open on Sunday?" in done.stdout, done.stdout
    tools = [t["function"]["name"] for t in fake.requests[-1].get("tools", [])]
    assert tools == ["opening_hours"]  # the new agent's tool reached the model


def test_a_wheel_and_a_requirements_file_install_too(box: InstalledAppliance, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([str(box.venv / "bin" / "python"), "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
                    "--find-links", str(WHEELHOUSE), "-w", str(wheels), str(EXAMPLES / "order-desk")],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    (wheel,) = wheels.glob("order_desk-1.0.0-*.whl")
    install_agent(box, wheel)
    agent = agent_status(box)["agent"]
    assert (agent["name"], agent["source"], agent["factory"]) == ("order-desk", str(wheel), "order_desk.agent:build")

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("order-desk==1.0.0\n")
    box.run("agent", "install", str(requirements), "--no-index", "--find-links", str(wheels), "--factory",
            "order_desk.agent:OrderDesk", timeout=600)  # fmt: skip
    agent = agent_status(box)["agent"]
    assert (agent["name"], agent["source"], agent["factory"]) == (
        "order-desk", str(requirements), "order_desk.agent:OrderDesk"
    )  # fmt: skip
    assert box.settings.worker.agent == "order_desk.agent:OrderDesk"
    bad = box.run("agent", "install", str(requirements), "--factory", "not a factory", check=False)
    assert bad.returncode == 1 and "error: --factory not a factory: not package.module:callable" in bad.stderr
