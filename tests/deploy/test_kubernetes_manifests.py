"""deploy/kubernetes: both overlays render offline with ``kubectl kustomize``, every built-in object validates
strictly against the Kubernetes 1.32 API schemas (kubernetes-validate, offline), and the objects the
deployment promises are there and agree with each other (selectors, ports, metric names, shard count)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from clients.score import build_parser

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ROOT / "deploy" / "kubernetes" / "overlays"
KUBERNETES_VERSION = "1.32"  # the installed kubectl's; kubernetes-validate ships its schemas
# Custom resources kubernetes-validate has no schema for; checked structurally below instead.
CRD_KINDS = {("monitoring.coreos.com/v1", "PodMonitor"), ("monitoring.coreos.com/v1", "ServiceMonitor")}
QUEUE_COMPUTE = re.compile(
    r"rate\(nv_inference_queue_duration_us\{.*\}\[1m\]\).*/\s*clamp_min\(.*"
    r"rate\(nv_inference_compute_infer_duration_us\{.*\}\[1m\]\).*,\s*1\)",
    re.S,
)

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")


def render(target: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(OVERLAYS / target)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


def test_every_builtin_object_validates_strictly(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _target, docs = rendered
    validated = set()
    for d in docs:
        if (d["apiVersion"], d["kind"]) in CRD_KINDS:
            continue
        kubernetes_validate.validate(d, KUBERNETES_VERSION, strict=True)
        validated.add(d["kind"])
    assert {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
        "Job",
        "ConfigMap",
        "PersistentVolumeClaim",
    } <= validated


def test_strict_validation_catches_a_misspelt_field(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    # The validator really is strict: a typo in the Deployment is refused.
    _target, docs = rendered
    dep = yaml.safe_load(yaml.safe_dump(one(docs, "Deployment", "tritonserver")))
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, KUBERNETES_VERSION, strict=True)


def test_tritonserver_deployment(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    target, docs = rendered
    dep = one(docs, "Deployment", "tritonserver")
    pod = dep["spec"]["template"]["spec"]
    c = container(pod, "tritonserver")
    name, _, tag = c["image"].partition(":")
    assert name == f"timesformer-serving-{target}" and tag == "0.1.0"
    assert "replicas" not in dep["spec"]  # the HPA owns it
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    start = c["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 600  # a plan load may take minutes
    res = c["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]) and "memory" in res["limits"]
    if target == "gpu":
        assert res["limits"]["nvidia.com/gpu"] == "1" and res["requests"]["nvidia.com/gpu"] == "1"
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    else:
        assert not any("nvidia.com/gpu" in r for r in res.values())
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    # Graceful stop: the grace period covers the preStop pause and Triton's own exit timeout.
    exit_timeout = int(next(a for a in c["args"] if a.startswith("--exit-timeout-secs=")).split("=")[1])
    pre_stop_s = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + exit_timeout
    # The model repository: $(MODEL_REPOSITORY) from a config map, a mounted volume by default.
    assert "--model-repository=$(MODEL_REPOSITORY)" in c["args"]
    cm_name = next(e["configMapRef"]["name"] for e in c["envFrom"] if "configMapRef" in e)
    assert one(docs, "ConfigMap", cm_name)["data"]["MODEL_REPOSITORY"] == "/models"
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/models")
    vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    one(docs, "PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert {f"--{k}-port={v}" for k, v in ports.items()} <= set(c["args"])


def test_service_pdb_and_network_policy_select_the_server(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _target, docs = rendered
    labels = one(docs, "Deployment", "tritonserver")["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    svc = one(docs, "Service", "tritonserver")
    assert selects(svc["spec"]["selector"])
    assert {p["name"] for p in svc["spec"]["ports"]} == {"http", "grpc", "metrics"}
    pdb = one(docs, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"])
    netpol = one(docs, "NetworkPolicy")
    assert selects(netpol["spec"]["podSelector"]["matchLabels"])
    rules = netpol["spec"]["ingress"]
    by_port = {p["port"]: r for r in rules for p in r["ports"]}
    client_peer = by_port["grpc"]["from"][0]["podSelector"]["matchLabels"]
    assert by_port["http"] is by_port["grpc"] and client_peer == {"timesformer-serving/client": "true"}
    scraper = by_port["metrics"]["from"][0]
    assert scraper["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert by_port["metrics"] is not by_port["http"]  # clients cannot scrape, the scraper cannot infer
    # The scoring Job's pods carry the client label.
    job_labels = one(docs, "Job", "score")["spec"]["template"]["metadata"]["labels"]
    assert all(job_labels.get(k) == v for k, v in client_peer.items())


def test_autoscaler_uses_the_queue_to_compute_ratio_from_the_adapter(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _target, docs = rendered
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tritonserver"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"  # a Triton metric per pod, not CPU
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "1"}
    adapter = one(docs, "ConfigMap", "prometheus-adapter")
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert QUEUE_COMPUTE.search(rule["metricsQuery"]), rule["metricsQuery"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    # The series it reads are scraped by the PodMonitor (a Prometheus operator CRD: checked by structure,
    # no schema for it ships with kubernetes-validate).
    mon = one(docs, "PodMonitor", "tritonserver")
    labels = one(docs, "Deployment", "tritonserver")["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in mon["spec"]["selector"]["matchLabels"].items())
    assert [e["port"] for e in mon["spec"]["podMetricsEndpoints"]] == ["metrics"]
    assert mon["metadata"]["namespace"] == one(docs, "Deployment", "tritonserver")["metadata"]["namespace"]
    assert set(mon) == {"apiVersion", "kind", "metadata", "spec"}


def test_scoring_job_is_indexed_and_each_pod_scores_its_own_shard(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _target, docs = rendered
    job = one(docs, "Job", "score")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never" and spec["backoffLimitPerIndex"] >= 1
    c = container(spec["template"]["spec"], "score")
    assert c["command"] == ["python", "-m", "clients.score"]
    args = c["args"]
    assert args[args.index("--shard") + 1] == f"$(JOB_COMPLETION_INDEX)/{spec['completions']}"
    assert "--resume" in args
    out = args[args.index("--out") + 1]
    assert "$(JOB_COMPLETION_INDEX)" in out and out.startswith("/scoring/")  # own output per index
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vol = next(v for v in spec["template"]["spec"]["volumes"] if v["name"] == mounts["/scoring"])
    pvc = one(docs, "PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # shared by every shard's pod
    # Exit 2 (bad arguments or input) fails the index at once; the rest are retried with the same index.
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailIndex" and rules[0]["onExitCodes"]["values"] == [2]
    # The arguments parse with the scorer's own parser once Kubernetes has expanded the variables.
    expanded = [a.replace("$(JOB_COMPLETION_INDEX)", "1").replace("$(SCORE_INPUT)", "in.txt") for a in args]
    parsed = build_parser().parse_args(expanded)
    assert parsed.shard == f"1/{spec['completions']}" and parsed.resume
    svc = one(docs, "Service", "tritonserver")
    host, port = parsed.urls[0].split(":")
    assert host == svc["metadata"]["name"] and int(port) in {p["port"] for p in svc["spec"]["ports"]}
