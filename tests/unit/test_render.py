"""The rendered service configs: start order, stop signals and timings, limits, and what each role runs."""

from __future__ import annotations

import configparser
from pathlib import Path

from appliance.layout import Layout
from appliance.render import render_all
from appliance.settings import ApplianceSettings
from appliance.tuning import postgres_tuning
from tests.unit.test_alerts import ROOT, promtool

SECRETS = {"redis": {"password": "r-secret"}, "postgres": {"password": "p-secret"},
           "livekit": {"api_key": "APIkey", "api_secret": "lk-secret"}}  # fmt: skip


def rendered(**sections: object) -> dict[str, str]:
    settings = ApplianceSettings(**{**SECRETS, **sections})  # type: ignore[arg-type]
    layout = Layout.of(settings, Path("/etc/appliance/appliance.toml"))
    return {f.path.name: f.text for f in render_all(settings, layout, journal=False)}


def supervisord(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read_string(text)
    return parser


def test_programs_start_in_order_and_the_worker_stops_gracefully() -> None:
    conf = supervisord(rendered()["supervisord.conf"])
    programs = {s.removeprefix("program:"): conf[s] for s in conf.sections() if s.startswith("program:")}
    order = sorted(programs, key=lambda name: int(programs[name]["priority"]))
    assert order[:7] == ["redis", "postgres", "livekit", "metrics", "console", "flusher", "worker"]
    worker = programs["worker"]
    assert worker["stopsignal"] == "TERM"
    assert (worker["stopasgroup"], worker["killasgroup"]) == ("false", "true")
    assert int(worker["stopwaitsecs"]) > ApplianceSettings().worker.drain_timeout_s
    assert programs["postgres"]["stopsignal"] == "INT"
    assert all(p["autorestart"] == "true" and int(p["startretries"]) >= 1000 for p in programs.values())
    assert programs["worker-alt"]["autostart"] == "false"
    assert conf["unix_http_server"]["chmod"] == "0770"


def test_secrets_only_in_files_for_the_service_user() -> None:
    files = rendered()
    assert "r-secret" in files["redis.conf"] and "lk-secret" in files["livekit.yaml"]
    for name in ("supervisord.conf", "postgresql.conf", "pg_hba.conf"):
        assert not any(secret in files[name] for secret in ("r-secret", "p-secret", "lk-secret")), name


def test_redis_is_capped_and_durable_and_postgres_is_loopback_only() -> None:
    files = rendered()
    redis = files["redis.conf"].splitlines()
    for line in ("bind 127.0.0.1", "maxmemory 2gb", "maxmemory-policy volatile-lru", "appendonly yes",
                 "appendfsync everysec", "protected-mode yes"):  # fmt: skip
        assert line in redis
    assert "listen_addresses = '127.0.0.1'" in files["postgresql.conf"]
    hba = [line.split() for line in files["pg_hba.conf"].splitlines() if line and not line.startswith("#")]
    assert all(rule[-1] == "scram-sha-256" for rule in hba)
    assert {rule[3] for rule in hba if rule[0] == "host"} == {"127.0.0.1/32", "::1/128"}


def test_a_worker_box_runs_only_the_exporter_the_flusher_and_the_worker() -> None:
    files = rendered(control={"role": "worker"}, livekit_server={"enabled": False})
    assert set(files) == {"supervisord.conf"}
    conf = supervisord(files["supervisord.conf"])
    assert {s for s in conf.sections() if s.startswith("program:")} == {
        "program:metrics", "program:flusher", "program:worker", "program:worker-alt"}  # fmt: skip


def test_bundled_livekit_faces_clients_unless_loopback_only() -> None:
    public = rendered(livekit_server={"node_ip": "203.0.113.7"})["livekit.yaml"]
    assert "bind_addresses" not in public and "node_ip: 203.0.113.7" in public
    private = rendered(livekit_server={"loopback_only": True})["livekit.yaml"]
    assert "bind_addresses: [127.0.0.1]" in private and "tcp_port: 0" in private
    assert "stun_servers: [127.0.0.1:" in private
    assert "level: info" in public
    assert "level: debug" in rendered(livekit_server={"log_level": "debug"})["livekit.yaml"]


def test_postgres_memory_follows_the_box() -> None:
    small = postgres_tuning(max_rooms=50, idle_processes=2, total_memory=4 * 2**30, cpus=2)
    large = postgres_tuning(max_rooms=50, idle_processes=2, total_memory=64 * 2**30, cpus=16)
    assert small.shared_buffers_mb < large.shared_buffers_mb <= 8192
    assert large.max_parallel_workers == 16
    assert small.max_connections >= 2 * 2 * 52


def test_the_worker_the_flusher_and_the_cli_each_get_their_own_redis_user() -> None:
    import hashlib

    from agent.store import acl

    files = rendered()
    users = {line.split()[1]: line.split()[2:] for line in files["redis.conf"].splitlines() if line.startswith("user ")}
    assert set(users) == {"worker", "flusher", "cli"}
    for user, rules in users.items():
        derived = acl.password("r-secret", user)  # type: ignore[arg-type]
        assert f"#{hashlib.sha256(derived.encode()).hexdigest()}" in rules and derived not in files["redis.conf"]
        assert "~appl:*" in rules and "-@all" in rules and not any(r in rules for r in ("+@all", "~*", "allkeys"))
    conf = supervisord(files["supervisord.conf"])
    for program, user in (("flusher", "flusher"), ("worker", "worker"), ("worker-alt", "worker")):
        assert f'APPLIANCE_REDIS__ACL_USER="{user}"' in conf[f"program:{program}"]["environment"]
    # A worker box on a shared Redis uses the credentials it was given: no users of ours there.
    shared = supervisord(rendered(control={"role": "worker"}, livekit_server={"enabled": False})["supervisord.conf"])
    assert "ACL_USER" not in shared["program:worker"]["environment"]


def test_livekit_offers_jobs_up_to_the_workers_max_rooms() -> None:
    """livekit-server's default target_load (0.7) starved a worker past 70 % of max_rooms (bench/rooms.py, 50 rooms)."""
    assert "\nagents:\n  target_load: 1.0\n" in rendered()["livekit.yaml"]


def test_the_bundled_prometheus_is_loopback_only_and_its_config_passes_promtool(tmp_path: Path) -> None:
    assert "prometheus.yml" not in rendered()  # off by default
    settings = ApplianceSettings(
        **SECRETS,  # type: ignore[arg-type]
        metrics={"prometheus": True, "bind": "0.0.0.0", "token": "scrape-secret", "retention": "30d"},
        control={"data_dir": str(tmp_path / "data")},
    )
    layout = Layout.of(settings, tmp_path / "etc" / "appliance.toml")
    files = {f.path: f for f in render_all(settings, layout, journal=False)}
    for file in files.values():
        file.path.parent.mkdir(parents=True, exist_ok=True)
        file.path.write_text(file.text)
    config = files[layout.prometheus_conf]
    assert config.secret and '"scrape-secret"' in config.text and "127.0.0.1:9464" in config.text
    assert files[layout.prometheus_rules].text == (ROOT / "config/prometheus/alerts.yml").read_text()
    done = promtool("check", "config", str(layout.prometheus_conf))
    assert done.returncode == 0 and "SUCCESS: 10 rules found" in done.stdout, done.stdout + done.stderr
    command = supervisord(files[layout.supervisord_conf].text)["program:prometheus"]["command"]
    for flag in ("--web.listen-address=127.0.0.1:9090", "--storage.tsdb.retention.time=30d",
                 "--storage.tsdb.retention.size=2GB", f"--storage.tsdb.path={tmp_path}/data/prometheus"):  # fmt: skip
        assert flag in command.split()
