"""pip's failures as one line, and what SOURCE may be."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.agent_packages import Source, pip_failure
from appliance.errors import ApplianceError

CONFLICT = """\
Processing /tmp/old-aiohttp
ERROR: Cannot install old-aiohttp==0.1 because these package versions have conflicting dependencies.

The conflict is caused by:
    old-aiohttp 0.1 depends on aiohttp<3.10
    The user requested (constraint) aiohttp==3.14.5

Additionally, some packages in these conflicts have no matching distributions available for your environment:
    aiohttp

To fix this you could try to:
1. loosen the range of package versions you've specified

ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/
"""


def test_a_conflict_names_both_requirements() -> None:
    assert (
        pip_failure(CONFLICT)
        == "conflict: old-aiohttp 0.1 depends on aiohttp<3.10, but the appliance has aiohttp==3.14.5"
    )


def test_another_failure_is_pips_first_error() -> None:
    output = (
        "Looking in links: /w\n"
        "ERROR: Could not find a version that satisfies the requirement nope==1\n"
        "ERROR: No matching distribution found for nope==1\n"
    )
    assert pip_failure(output) == "Could not find a version that satisfies the requirement nope==1"
    assert pip_failure("Traceback ...\nOSError: disk full\n") == "OSError: disk full"
    assert pip_failure("") == "pip failed"


def test_a_source_is_a_project_a_wheel_or_a_requirements_file(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    with pytest.raises(ApplianceError, match=r"without pyproject\.toml"):
        Source.of(str(project))
    (project / "pyproject.toml").write_text("")
    assert Source.of(str(project)).pip_args == (str(project),)
    wheel = tmp_path / "a-1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    assert Source.of(str(wheel)).pip_args == (str(wheel),)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("a==1\n")
    assert Source.of(str(requirements)).pip_args == ("-r", str(requirements))
    with pytest.raises(ApplianceError, match="no such project directory, wheel"):
        Source.of(str(tmp_path / "missing"))
