"""The shipped alert rules (config/prometheus/alerts.yml): valid for Prometheus, each firing for its fault
(promtool's own rule tests, tests/unit/alerts_test.yml), and naming only series the exporter exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from appliance.metrics import exposition
from tests.unit.test_metrics import report
from tests.unit.test_recorded import figures

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "alerts.yml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"  # Debian's prometheus package (scripts/test installs it)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_accepts_the_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_each_alert_fires_for_its_fault() -> None:
    done = promtool("test", "rules", "tests/unit/alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", (ROOT / "tests/unit/alerts_test.yml").read_text()))
    shipped = set(re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.MULTILINE))
    assert tested == shipped


def test_the_rules_name_only_series_the_exporter_exports(tmp_path: Path) -> None:
    text = exposition(report(), figures(tmp_path), room_names=False, data_dir=Path("/")).decode()
    exported = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    used = set(re.findall(r"\bappliance_\w+", RULES.read_text()))
    assert used and used <= exported, used - exported
