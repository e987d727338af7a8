"""Debian's Prometheus for the tests: asking one (the appliance's bundled one, or a private one) through its HTTP API,
and a private one on a temporary directory and a free loopback port, scraping what the test says."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from harness.servers import free_port, wait_until


class PrometheusAPI:
    """The HTTP API of a Prometheus at ``url`` (http://127.0.0.1:PORT)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's vector (now, or at the unix time ``at``): [{"metric": {labels}, "value": [t, "x"]}]."""
        data = self.get("/api/v1/query", query=expr, **({} if at is None else {"time": str(at)}))
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    def values(self, expr: str, at: float | None = None) -> list[float]:
        return [float(sample["value"][1]) for sample in self.query(expr, at)]

    def firing(self) -> set[str]:
        return {a["labels"]["alertname"] for a in self.get("/api/v1/alerts")["alerts"] if a["state"] == "firing"}

    def ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as answer:
            return bool(answer.status == 200)


class PrivatePrometheus(PrometheusAPI):
    """``prometheus`` scraping ``target`` (host:port) as job "appliance" every second, evaluating ``rules`` (the
    text of a rules file) every second; stopped by close()."""

    def __init__(self, target: str, rules: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="prometheus-"))
        port = free_port()
        super().__init__(f"http://127.0.0.1:{port}")
        (self.dir / "rules.yml").write_text(rules)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(self.dir / "rules.yml")],
            "scrape_configs": [{"job_name": "appliance", "static_configs": [{"targets": [target]}]}],
        }
        (self.dir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed: scripts/test installs Debian's package")
        self.log = (self.dir / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [binary, f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until(self.ready, 30, f"Prometheus ready on {self.url}", interval=0.2)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
