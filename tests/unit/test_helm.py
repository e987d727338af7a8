"""deploy/helm/livekit-appliance checked without a cluster: `helm lint --strict` and `helm template` (the helm of
config/helm.version, built by scripts/build-helm), every rendered manifest validated against Kubernetes' own
schemas (kubernetes-validate, offline), the rendered settings loaded by the appliance's loader, and the facts an
operator relies on: the drain fits the grace period, the pods run as 10001 on a read-only root, the HPA scales the
StatefulSet on rooms per pod and slowly down, the secrets are a file and never the environment."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from agent.settings import load_settings
from appliance.settings import ApplianceSettings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "livekit-appliance"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
HELM_VERSION = (ROOT / "config" / "helm.version").read_text().strip()
KUBERNETES = "1.30"  # the schemas kubernetes-validate ships for it; the chart needs 1.29+ (native sidecars)
NAMESPACE = "appliance"
RELEASE = "lk"
SPOOL = "/var/lib/appliance/spool"
UID = 10001

Doc = dict[str, Any]

# The second set: autoscaling off, an existing Secret, another drain, no sidecars.
SECOND: Doc = {
    "autoscaling": {"enabled": False},
    "secrets": {"existingSecret": "appliance-secrets"},
    "worker": {"replicas": 3, "drainTimeoutSeconds": 120, "spoolFlusher": {"enabled": False}},
    "flusher": {"replicas": 2},
    "metrics": {"enabled": False},
}
# Secrets given as values, to load what the chart's own Secret holds.
WITH_SECRETS: Doc = {
    "secrets": {
        "values": {
            "livekit": {"api_key": "APIkey", "api_secret": "s3cret"},
            "redis": {"password": "redis-pw"},
            "postgres": {"password": "pg-pw"},
        }
    },
    "config": {"worker": {"agent": "agent.sample:build", "max_rooms": 999}, "models": {"llm": "offline"}},
}


def helm_bin() -> Path:
    return Path(os.environ.get("HELM_BIN") or Path.home() / "go" / "bin" / "helm")


@pytest.fixture(scope="module")
def helm() -> Path:
    """The pinned helm, or one line saying how to get it (a missing helm is a failure, not a skip)."""
    path = helm_bin()
    try:
        version = subprocess.run(
            [str(path), "version", "--template", "{{.Version}}"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        version = None
    if version is None:
        pytest.fail(f"no helm at {path} (HELM_BIN): scripts/build-helm {path} builds it", pytrace=False)
    if version != f"v{HELM_VERSION}":
        pytest.fail(
            f"helm at {path} is {version}, not v{HELM_VERSION}: scripts/build-helm {path} builds it", pytrace=False
        )
    return path


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, check=False, timeout=120)


def values_file(tmp: Path, values: Doc) -> list[str]:
    path = tmp / f"values-{len(list(tmp.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["-f", str(path)]


def template(helm: Path, *args: str) -> list[Doc]:
    done = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def renders(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    tmp = tmp_path_factory.mktemp("values")
    return {
        "default": template(helm),
        "second": template(helm, *values_file(tmp, SECOND)),
        "secrets": template(helm, *values_file(tmp, WITH_SECRETS)),
    }


def one(docs: list[Doc], kind: str, name_end: str = "") -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_end)]
    assert len(found) == 1, f"{kind} *{name_end}: {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for doc in docs:
        if doc["kind"] in ("StatefulSet", "Deployment"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def containers(spec: Doc) -> list[Doc]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def main_container(docs: list[Doc], kind: str) -> Doc:
    spec = one(docs, kind)["spec"]["template"]["spec"]
    (found,) = spec["containers"]
    assert isinstance(found, dict)
    return found


def rendered_files(docs: list[Doc], tmp: Path) -> tuple[Path, Path]:
    """appliance.toml from the ConfigMap and secrets.toml from the chart's Secret, as the init container leaves
    them (the secrets 0600)."""
    config = tmp / "appliance.toml"
    config.write_text(one(docs, "ConfigMap", "-config")["data"]["appliance.toml"])
    secrets = tmp / "secrets.toml"
    secrets.write_text(one(docs, "Secret")["stringData"]["secrets.toml"])
    secrets.chmod(0o600)
    return config, secrets


def test_lint_is_clean_in_strict_mode(helm: Path, tmp_path: Path) -> None:
    for args in ([], values_file(tmp_path, SECOND), values_file(tmp_path, WITH_SECRETS)):
        done = run_helm(helm, "lint", "--strict", str(CHART), *args)
        assert done.returncode == 0 and "0 chart(s) failed" in done.stdout, done.stdout + done.stderr
        assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


@pytest.mark.parametrize("name", ["default", "second", "secrets"])
def test_every_manifest_is_valid_for_kubernetes(renders: dict[str, list[Doc]], name: str) -> None:
    for doc in renders[name]:
        assert kubernetes_validate.validate(doc, KUBERNETES, strict=True) == KUBERNETES
        assert doc["metadata"].get("namespace") in (None, NAMESPACE)


def test_the_validator_refuses_what_kubernetes_would() -> None:
    """It validates for real, offline: a misspelled field and a wrong type are refused."""
    pod: Doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i", "securityContext": {"runAsUsr": 1}}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, KUBERNETES, strict=True)
    pod["spec"]["containers"][0]["securityContext"] = {"runAsUser": "root"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, KUBERNETES, strict=True)


def test_what_is_made_and_nothing_exposed(renders: dict[str, list[Doc]]) -> None:
    kinds = sorted(d["kind"] for d in renders["default"])
    assert kinds == sorted(
        [
            "ConfigMap",  # appliance.toml
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "Secret",
            "ServiceAccount",
            "StatefulSet",
        ]
    )
    assert sorted(d["kind"] for d in renders["second"]) == [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "ServiceAccount",
        "StatefulSet",
    ]
    for docs in renders.values():
        for _, spec in pod_specs(docs):
            for container in containers(spec):
                assert all("hostPort" not in port for port in container.get("ports", [])), container["name"]


def test_the_grace_period_covers_the_drain(renders: dict[str, list[Doc]]) -> None:
    for name, drain in (("default", 300), ("second", 120)):
        docs = renders[name]
        settings = tomllib.loads(one(docs, "ConfigMap", "-config")["data"]["appliance.toml"])
        assert settings["worker"]["drain_timeout_s"] == drain
        spec = one(docs, "StatefulSet")["spec"]["template"]["spec"]
        # The drain is the SIGTERM: no preStop hook delays it, and the grace period is the drain plus a margin.
        assert spec["terminationGracePeriodSeconds"] == drain + 30 > drain
        for container in containers(spec):
            assert "preStop" not in container.get("lifecycle", {}), container["name"]
        args = main_container(docs, "StatefulSet")
        assert args["command"] == ["/usr/bin/tini", "--"]  # tini passes SIGTERM on to the worker


def test_pods_run_as_10001_on_a_read_only_root(renders: dict[str, list[Doc]]) -> None:
    for docs in renders.values():
        for name, spec in pod_specs(docs):
            pod = spec["securityContext"]
            assert pod["runAsNonRoot"] is True and pod["runAsUser"] == UID and pod["runAsGroup"] == UID, name
            assert pod["fsGroup"] == UID and pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
            for key in ("hostNetwork", "hostPID", "hostIPC"):
                assert not spec.get(key), (name, key)
            assert all("hostPath" not in volume for volume in spec["volumes"]), name
            assert spec["automountServiceAccountToken"] is False, name
            for container in containers(spec):
                ctx = container["securityContext"]
                where = (name, container["name"])
                assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == UID and ctx["runAsGroup"] == UID, where
                assert ctx["readOnlyRootFilesystem"] is True, where
                assert ctx["allowPrivilegeEscalation"] is False and ctx["privileged"] is False, where
                assert ctx["capabilities"] == {"drop": ["ALL"]}, where
                assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
            volumes = {v["name"]: v for v in spec["volumes"]}
            for container in spec["containers"]:
                mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                assert "emptyDir" in volumes[mounts["/tmp"]], name  # the one writable place besides the spool
                assert volumes[mounts["/etc/appliance"]]["emptyDir"]["medium"] == "Memory", name


def test_the_worker_is_a_stateful_set_with_a_spool_claim_per_pod(renders: dict[str, list[Doc]]) -> None:
    sts = one(renders["default"], "StatefulSet")["spec"]
    assert sts["podManagementPolicy"] == "Parallel"
    assert "replicas" not in sts  # the HPA owns the count
    assert one(renders["second"], "StatefulSet")["spec"]["replicas"] == 3
    (claim,) = sts["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "spool"
    assert sts["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    worker = main_container(renders["default"], "StatefulSet")
    assert {"name": "spool", "mountPath": SPOOL} in worker["volumeMounts"]
    assert worker["args"] == ["python", "-m", "agent.worker"]
    # Memory for max_rooms rooms at ~100 MB each, and a limit equal to the request (no OOM kill of every room).
    memory = worker["resources"]["requests"]["memory"]
    assert memory == worker["resources"]["limits"]["memory"]
    units = {"Mi": 2**20, "Gi": 2**30}
    assert int(memory[:-2]) * units[memory[-2:]] >= 50 * 100 * 10**6


def test_the_probes_ask_the_health_port_on_the_pods_address(renders: dict[str, list[Doc]]) -> None:
    worker = main_container(renders["default"], "StatefulSet")
    ports = {port["name"]: port["containerPort"] for port in worker["ports"]}
    assert ports == {"health": 8081, "metrics": 9464}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert worker[probe]["httpGet"] == {"path": "/", "port": "health"}, probe
    # The worker listens there: its health server on every address of the pod, its Prometheus endpoint on.
    config = tomllib.loads(one(renders["default"], "ConfigMap", "-config")["data"]["appliance.toml"])
    assert config["worker"]["health_bind"] == "0.0.0.0" and config["worker"]["health_port"] == 8081
    assert config["worker"]["prometheus_port"] == 9464
    second = tomllib.loads(one(renders["second"], "ConfigMap", "-config")["data"]["appliance.toml"])
    assert "prometheus_port" not in second["worker"]  # metrics off


def test_the_hpa_scales_the_stateful_set_on_rooms_per_pod(helm: Path, renders: dict[str, list[Doc]]) -> None:
    docs = renders["default"]
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    target = one(docs, "StatefulSet")["metadata"]["name"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": target}
    assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
    (metric,) = spec["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "appliance_worker_rooms"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "35"}  # 70 % of max_rooms 50
    # The target follows worker.maxRooms (in thousandths of a room when it is not a whole number).
    other = one(template(helm, "--set", "worker.maxRooms=45"), "HorizontalPodAutoscaler")["spec"]["metrics"][0]
    assert other["pods"]["target"]["averageValue"] == "31500m"
    down = spec["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 600
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
    assert down["selectPolicy"] == "Min"


def test_the_pdb_selects_the_worker_pods(renders: dict[str, list[Doc]]) -> None:
    docs = renders["default"]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["maxUnavailable"] == 1
    selector = pdb["spec"]["selector"]["matchLabels"]
    worker_labels = one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    flusher_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= worker_labels.items()
    assert not selector.items() <= flusher_labels.items()
    assert one(docs, "StatefulSet")["spec"]["selector"]["matchLabels"] == selector


def test_the_secrets_are_a_mounted_file_never_the_environment(renders: dict[str, list[Doc]]) -> None:
    for name, secret in (("default", f"{RELEASE}-livekit-appliance-secrets"), ("second", "appliance-secrets")):
        docs = renders[name]
        assert [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"] == ([secret] if name == "default" else [])
        for pod, spec in pod_specs(docs):
            volumes = [v for v in spec["volumes"] if "secret" in v]
            assert [v["secret"]["secretName"] for v in volumes] == [secret], pod
            (volume,) = volumes
            assert volume["secret"]["defaultMode"] == 0o400
            for container in containers(spec):
                where = (pod, container["name"])
                assert not any("secretRef" in source for source in container.get("envFrom", [])), where
                for env in container.get("env", []):
                    assert "secretKeyRef" not in env.get("valueFrom", {}), where
                    assert not re.search(r"PASSWORD|SECRET|API_KEY|TOKEN", env["name"]) or env["name"] == (
                        "APPLIANCE_SECRETS"
                    ), where
                mounts = [m for m in container.get("volumeMounts", []) if m["name"] == volume["name"]]
                # Only the init container that copies it (mode 0600, owned by 10001) mounts the Secret, read-only.
                assert [m.get("readOnly") for m in mounts] == ([True] if container["name"] == "settings" else [])
            for container in spec["containers"]:
                env = {e["name"]: e.get("value") for e in container["env"]}
                assert env["APPLIANCE_CONFIG"] == "/etc/appliance/appliance.toml"
                assert env["APPLIANCE_SECRETS"] == "/etc/appliance/secrets.toml"
            (init,) = [c for c in spec["initContainers"] if c["name"] == "settings"]
            assert "install -m 0600 /run/appliance-src/secret/secrets.toml /etc/appliance/secrets.toml" in " ".join(
                init["command"]
            )


def test_the_rendered_settings_load_as_a_worker_box(renders: dict[str, list[Doc]], tmp_path: Path) -> None:
    docs = renders["secrets"]
    config, secrets = rendered_files(docs, tmp_path)
    settings = load_settings(ApplianceSettings, config_file=config, secrets_file=secrets)
    assert settings.control.role == "worker" and settings.livekit_server.enabled is False
    assert settings.livekit.url == "wss://livekit.example.com"
    assert settings.livekit.api_secret is not None and settings.livekit.api_secret.get_secret_value() == "s3cret"
    assert settings.redis.host == "redis.example.com" and settings.redis.port == 6379 and settings.redis.tls
    assert settings.redis.password is not None and settings.postgres.password is not None
    assert (settings.postgres.host, settings.postgres.port, settings.postgres.sslmode) == (
        "postgres.example.com",
        5432,
        "verify-full",
    )
    # The chart's own values win over `config`; `config` adds the rest.
    assert settings.worker.max_rooms == 50 and settings.worker.drain_timeout_s == 300
    assert settings.worker.agent == "agent.sample:build" and settings.models.llm == "offline"
    assert str(settings.store.spool_dir) == SPOOL
    assert settings.logging.journal is False


def test_each_flusher_has_its_own_consumer_name(renders: dict[str, list[Doc]]) -> None:
    docs = renders["default"]
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert one(renders["second"], "Deployment")["spec"]["replicas"] == 2
    spool_flusher = next(
        c
        for c in one(docs, "StatefulSet")["spec"]["template"]["spec"]["initContainers"]
        if c["name"] == "spool-flusher"
    )
    assert spool_flusher["restartPolicy"] == "Always"  # a native sidecar: it outlives the worker's drain
    for container in (main_container(docs, "Deployment"), spool_flusher):
        assert container["args"] == ["python", "-m", "agent.flusher"]
        (consumer,) = [e for e in container["env"] if e["name"] == "APPLIANCE_FLUSHER__CONSUMER"]
        assert consumer["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_the_service_account_mounts_no_token(renders: dict[str, list[Doc]]) -> None:
    account = one(renders["default"], "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    for _, spec in pod_specs(renders["default"]):
        assert spec["serviceAccountName"] == account["metadata"]["name"]


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("worker.replicas=-1", "/worker/replicas"),
        ("flusher.replicas=-2", "/flusher/replicas"),
        ("worker.drainTimeoutSeconds=null", "drainTimeoutSeconds"),  # missing
        ("worker.drainTimeoutSeconds=0", "/worker/drainTimeoutSeconds"),
        ("worker.maxRooms=0", "/worker/maxRooms"),
        ("redis.port=70000", "/redis/port"),
        ("autoscaling.maxReplicas=0", "/autoscaling/maxReplicas"),
        ("autoscaling.targetRoomsPercent=120", "/autoscaling/targetRoomsPercent"),
        ("livekit.url=wss://key:secret@lk.example.com", "/livekit/url"),
    ],
)
def test_a_bad_value_is_refused_naming_its_field(helm: Path, setting: str, named: str) -> None:
    """values.schema.json: both lint and template refuse it."""
    for command in (["template", RELEASE], ["lint", "--strict"]):
        done = run_helm(helm, *command, str(CHART), "--set", setting)
        assert done.returncode != 0, (command, done.stdout)
        assert named in done.stdout + done.stderr, (command, done.stdout + done.stderr)


def test_values_that_disagree_are_refused_naming_them(helm: Path) -> None:
    """What a schema cannot compare, the template refuses; helm 4's lint only logs a template's `fail`."""
    setting, message = "autoscaling.minReplicas=5,autoscaling.maxReplicas=3", "autoscaling.minReplicas (5)"
    done = run_helm(helm, "template", RELEASE, str(CHART), "--set", setting)
    assert done.returncode != 0 and message in done.stderr, done.stderr
    done = run_helm(helm, "lint", "--strict", str(CHART), "--set", setting)
    assert message in done.stdout + done.stderr, done.stdout + done.stderr


def test_a_cluster_without_native_sidecars_is_refused(helm: Path) -> None:
    """The spool flusher is an init container with restartPolicy Always: Kubernetes 1.29+."""
    done = run_helm(helm, "template", RELEASE, str(CHART), "--kube-version", "1.28")
    assert done.returncode != 0 and "kubeVersion" in done.stderr, done.stderr
    assert run_helm(helm, "template", RELEASE, str(CHART), "--kube-version", KUBERNETES).returncode == 0


def test_the_images_are_the_dockerfiles_worker_target(renders: dict[str, list[Doc]]) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dockerfile = DOCKERFILE.read_text()
    assert values["image"]["repository"] == "livekit-appliance-worker"
    assert "--target worker -t livekit-appliance-worker " in dockerfile
    assert re.search(r"^FROM python AS worker$", dockerfile, flags=re.MULTILINE)
    worker_stage = dockerfile.split("FROM python AS worker", 1)[1].split("\nFROM ", 1)[0]
    assert 'ENTRYPOINT ["/usr/bin/tini", "--"]' in worker_stage
    assert 'CMD ["python", "-m", "agent.worker"]' in worker_stage
    assert "USER 10001:10001" in worker_stage
    assert chart["apiVersion"] == "v2" and chart["appVersion"] == project["version"]
    for docs in renders.values():
        for _, spec in pod_specs(docs):
            for container in containers(spec):
                assert container["image"] == f"livekit-appliance-worker:{project['version']}", container["name"]


def test_the_hpa_reads_livekits_own_rooms_metric() -> None:
    """The adapter rule documented beside the HPA turns the worker's lk_agents_active_job_count (livekit-agents'
    gauge, served on [worker] prometheus_port) into the metric the HPA names."""
    from livekit.agents.telemetry import metrics

    assert metrics.RUNNING_JOB_GAUGE._name == "lk_agents_active_job_count"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for text in ((CHART / "values.yaml").read_text(), (CHART / "README.md").read_text()):
        assert 'seriesQuery: \'lk_agents_active_job_count{namespace!="",pod!=""}\'' in text
        assert f"as: {values['autoscaling']['metricName']}" in text
