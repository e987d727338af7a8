"""The Grafana dashboard (config/grafana/appliance-dashboard.json): every panel's query is valid PromQL (promtool
parses it as a recording rule) and names only series the exporter exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from appliance.metrics import exposition
from tests.unit.test_alerts import promtool
from tests.unit.test_metrics import report
from tests.unit.test_recorded import figures

DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana" / "appliance-dashboard.json"


def queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    rules = tmp_path / "queries.yml"
    records = [{"record": f"dashboard:query_{n}", "expr": expr} for n, expr in enumerate(queries())]
    rules.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": records}]}))  # JSON is YAML
    done = promtool("check", "rules", str(rules))
    assert done.returncode == 0 and f"SUCCESS: {len(records)} rules found" in done.stdout, done.stdout + done.stderr


def test_the_dashboard_names_only_series_the_exporter_exports(tmp_path: Path) -> None:
    text = exposition(report(), figures(tmp_path), room_names=False, data_dir=Path("/")).decode()
    exported = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    used = {name for expr in queries() for name in re.findall(r"\bappliance_\w+", expr)}
    assert used and used <= exported, used - exported
