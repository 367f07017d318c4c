"""The Helm chart (deploy/helm/mlgw) and the container image (deploy/image/build), against the
real tools and the test control plane:

- helm, built from its Go module (tests/deploy/tools), lints the chart and renders it with the
  default values and with ``values-full.yaml``; the rendered objects are checked.
- The manifests are applied with a server-side dry run, then installed for real, each run in
  fresh namespaces of the test control plane (``$MLGW_TEST_KUBECONFIG``, else
  ``tests/cluster/up``). The Prometheus Operator is not part of that cluster, so a minimal
  ServiceMonitor CRD written here (a stand-in, see ``SERVICE_MONITOR_CRD``) is installed for
  the ServiceMonitor to be applied against.
- The chart's RBAC is sufficient and no more: a token of the chart's ServiceAccount drives the
  real gateway (``$MLGW_BIN``) on the chart's own rendered config through a kubeflow job and a
  kserve deploy, and is refused (403) what the values did not grant.
- The image: written from the static binary (``$MLGW_STATIC_BIN``, the musl build) and read back
  from the archive: config, layer, digests; the dynamically linked test binary is refused. Then
  run as a container runtime would run it, from its own unpacked layer (no cluster needed).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "mlgw"
FULL = Path(__file__).resolve().parent / "values-full.yaml"
IMAGE_BUILD = REPO / "deploy" / "image" / "build"
CONTAINERFILE = REPO / "deploy" / "image" / "Containerfile"
START_TIMEOUT = 60.0

# What the bundled plugins do with each kind (values.yaml's rbac.kinds), as Role rules.
# list and watch: the gateway's watch cache (README "Configuration", kube_resync_ms).
JOB_VERBS = ["create", "delete", "get", "list", "patch", "watch"]
POD_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
]
RESTRICTED_CONTAINER = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """Polls ``check`` until it returns something truthy, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(every)


def run(cmd: list[str], timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def ok(cmd: list[str], timeout: float = 120, **kw: Any) -> str:
    out = run(cmd, timeout, **kw)
    assert out.returncode == 0, f"{cmd[:3]}… exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


# --- tools, cluster ----------------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    helm: str
    crane: str
    env: dict[str, str]


@pytest.fixture(scope="session")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    lines = ok([str(REPO / "tests" / "deploy" / "tools")], timeout=1800).split()
    helm, crane = lines[-2:]
    home = tmp_path_factory.mktemp("helm-home")
    # helm's own state stays out of the user's home.
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return Tools(helm=helm, crane=crane, env=env)


@dataclass(frozen=True)
class Cluster:
    admin: Path
    kubectl: list[str]
    server: str
    ca: str


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    kubeconfig = os.environ.get("MLGW_TEST_KUBECONFIG")
    if not kubeconfig:
        kubeconfig = ok([str(REPO / "tests" / "cluster" / "up")], timeout=1800).split()[-1]
    admin = Path(kubeconfig)
    cfg = yaml.safe_load(admin.read_text())
    cl = cfg["clusters"][0]["cluster"]
    return Cluster(
        admin=admin,
        kubectl=[str(admin.parent / "bin" / "kubectl"), "--kubeconfig", str(admin)],
        server=cl["server"],
        ca=cl["certificate-authority"],
    )


def helm(tools: Tools, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run([tools.helm, *args], timeout, env=tools.env)


def render(tools: Tools, namespace: str, *args: str, release: str = "mlgw") -> list[dict]:
    out = helm(tools, "template", release, str(CHART), "--namespace", namespace, *args)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def only(docs: list[dict], kind: str, namespace: str | None = None) -> dict:
    found = [
        d
        for d in docs
        if d["kind"] == kind and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]
    assert len(found) == 1, (kind, namespace, [d["metadata"]["name"] for d in found])
    return found[0]


def config_of(docs: list[dict]) -> dict:
    return tomllib.loads(only(docs, "ConfigMap")["data"]["mlgw.toml"])


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings_in(v)


def rbac_has_no_wildcard(docs: list[dict]) -> None:
    for d in docs:
        if d["kind"] in ("Role", "ClusterRole"):
            assert not [s for s in strings_in(d["rules"]) if "*" in s], d


# --- rendering -----------------------------------------------------------------------------


def test_helm_lint_is_clean_with_default_and_full_values(tools: Tools) -> None:
    for extra in ([], ["-f", str(FULL)]):
        out = helm(tools, "lint", "--strict", str(CHART), *extra)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout, out.stdout
        assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout, out.stdout


def test_default_values_render_a_restricted_gateway_with_one_training_target(
    tools: Tools,
) -> None:
    docs = render(tools, "ml")
    assert sorted(d["kind"] for d in docs) == [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "mlgw"
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (c,) = pod["containers"]
    assert c["image"] == "mlgw:0.1.0"
    assert "command" not in c and "args" not in c  # the image's entrypoint serves the config
    assert c["securityContext"] == RESTRICTED_CONTAINER
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"] == {"port": 50051}, (probe, c[probe])
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": 50051, "metrics": 9090}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts == {"/etc/mlgw": "config", "/var/lib/mlgw": "data", "/tmp": "tmp"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["data"] and "emptyDir" in volumes["tmp"]
    assert volumes["config"]["configMap"]["name"] == "mlgw"

    svc = only(docs, "Service")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"grpc": 50051, "metrics": 9090}

    cfg = config_of(docs)
    assert cfg["listen"] == "0.0.0.0:50051" and cfg["data_dir"] == "/var/lib/mlgw"
    assert cfg["observability"] == {"metrics_listen": "0.0.0.0:9090"}
    assert cfg["targets"] == {
        "training": {
            "plugin": "kubeflow",
            "settings": {"kind": "job", "image": "python:3.12"},
            "grants": {"kube": {"namespaces": ["ml"], "kinds": ["batch/v1/Job", "v1/Pod"]}},
        }
    }
    role = only(docs, "Role")
    assert role["metadata"]["namespace"] == "ml"
    assert role["rules"] == [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": JOB_VERBS},
        *POD_RULES,
    ]
    binding = only(docs, "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mlgw", "namespace": "ml"}]
    rbac_has_no_wildcard(docs)


def test_full_values_render_every_optional_object(tools: Tools) -> None:
    docs = render(tools, "ml", "-f", str(FULL))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ], kinds
    # Both targets are in team-a: one Role there, none in the release's namespace.
    role = only(docs, "Role", "team-a")
    assert role["rules"] == [
        {"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"], "verbs": JOB_VERBS},
        {
            "apiGroups": ["serving.kserve.io"],
            "resources": ["inferenceservices"],
            "verbs": ["create", "delete", "get", "list", "patch", "watch"],
        },
        *POD_RULES,
    ]
    assert only(docs, "RoleBinding", "team-a")["subjects"] == [
        {"kind": "ServiceAccount", "name": "mlgw", "namespace": "ml"}
    ]
    rbac_has_no_wildcard(docs)

    sa = only(docs, "ServiceAccount")
    assert sa["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/mlgw-gateway"
    }
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "registry.example.com/ml/mlgw:0.1.0-test"
    env = {e["name"]: e for e in c["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "mlgw-aws", "key": "secret-access-key"}
    }
    assert env["RUST_LOG"]["value"] == "info"
    data = {v["name"]: v for v in pod["volumes"]}["data"]
    assert data["persistentVolumeClaim"] == {"claimName": "mlgw-data"}
    pvc = only(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert pvc["spec"]["storageClassName"] == ""
    assert only(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1

    sm = only(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    np = only(docs, "NetworkPolicy")["spec"]
    assert np["policyTypes"] == ["Ingress", "Egress"]
    assert [r["ports"] for r in np["ingress"]] == [
        [{"port": "grpc", "protocol": "TCP"}],
        [{"port": "metrics", "protocol": "TCP"}],
    ]
    assert np["egress"][0]["ports"][0] == {"port": 53, "protocol": "UDP"}

    cfg = config_of(docs)
    assert cfg["default_target"] == "kubeflow"
    assert set(cfg["targets"]) == {"kubeflow", "kserve"}  # the default target is not merged in
    kf = cfg["targets"]["kubeflow"]
    # Whole numbers stay integers (the gateway's integer keys refuse 1.0); dotted keys survive.
    assert kf["settings"]["pod_check_seconds"] == 1
    assert isinstance(kf["settings"]["pod_check_seconds"], int)
    assert cfg["limits"] == {"call_timeout_ms": 20000, "reconcile_interval_ms": 500}
    assert kf["settings"]["pod_annotations"] == {"mlgw.dev/fake-duration": "2s"}
    assert kf["settings"]["gpu_types"]["a100"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert kf["grants"]["kube"] == {
        "namespaces": ["team-a"],
        "kinds": ["kubeflow.org/v1/PyTorchJob", "v1/Pod"],
    }
    assert cfg["targets"]["kserve"]["routes"] == {
        "hosts": ["*.team-a.svc.cluster.local", "*.example.com"],
        "allow_host_header": True,
    }


def test_cluster_kinds_get_a_cluster_role_and_a_kind_without_rules_fails_the_render(
    tools: Tools,
) -> None:
    target = {
        "plugin": "kubeflow",
        "settings": {"kind": "trainjob", "runtime_ref": {"name": "torch"}},
        "grants": {
            "kube": {
                "namespaces": ["team-a"],
                "kinds": ["trainer.kubeflow.org/v1alpha1/TrainJob", "v1/Pod"],
                "cluster_kinds": ["trainer.kubeflow.org/v1alpha1/ClusterTrainingRuntime"],
            }
        },
    }
    kinds = {
        "trainer.kubeflow.org/v1alpha1/ClusterTrainingRuntime": {
            "resource": "clustertrainingruntimes",
            "verbs": ["get"],
        }
    }
    docs = render(
        tools,
        "ml",
        "--set-json",
        f"config.targets.trainer={json.dumps(target)}",
        "--set-json",
        f"rbac.kinds={json.dumps(kinds)}",
    )
    cr = only(docs, "ClusterRole")
    assert cr["metadata"]["name"] == "ml-mlgw"
    assert cr["rules"] == [
        {
            "apiGroups": ["trainer.kubeflow.org"],
            "resources": ["clustertrainingruntimes"],
            "verbs": ["get"],
        }
    ]
    crb = only(docs, "ClusterRoleBinding")
    assert crb["roleRef"]["name"] == "ml-mlgw"
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": "mlgw", "namespace": "ml"}]
    assert only(docs, "Role", "team-a")["rules"][0] == {
        "apiGroups": ["trainer.kubeflow.org"],
        "resources": ["trainjobs"],
        "verbs": JOB_VERBS,
    }
    # Without cluster_kinds there is no ClusterRole at all.
    assert not [d for d in render(tools, "ml", "-f", str(FULL)) if d["kind"] == "ClusterRole"]

    target["grants"]["kube"]["kinds"] = ["apps/v1/Deployment"]  # type: ignore[index]
    target["grants"]["kube"].pop("cluster_kinds")  # type: ignore[attr-defined]
    out = helm(
        tools,
        "template",
        "mlgw",
        str(CHART),
        "--set-json",
        f"config.targets.trainer={json.dumps(target)}",
    )
    assert out.returncode != 0
    assert "targets.trainer.grants.kube.kinds grants apps/v1/Deployment" in out.stderr, out.stderr
    assert "rbac.kinds has no entry" in out.stderr, out.stderr


# --- the cluster ---------------------------------------------------------------------------

# A stand-in for the Prometheus Operator's CRD (not part of the test cluster, and not served by
# the Go module proxy): the fields the chart writes, typed as the operator's CRD types them, and
# nothing else, so a misspelt field is refused by strict validation like the real one would.
DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "kind": "ServiceMonitor",
            "listKind": "ServiceMonitorList",
            "plural": "servicemonitors",
            "singular": "servicemonitor",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "required": ["spec"],
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "metadata": {"type": "object"},
                            "spec": {
                                "type": "object",
                                "required": ["selector", "endpoints"],
                                "properties": {
                                    "selector": {
                                        "type": "object",
                                        "properties": {
                                            "matchLabels": {
                                                "type": "object",
                                                "additionalProperties": {"type": "string"},
                                            }
                                        },
                                    },
                                    "namespaceSelector": {
                                        "type": "object",
                                        "properties": {
                                            "any": {"type": "boolean"},
                                            "matchNames": {
                                                "type": "array",
                                                "items": {"type": "string"},
                                            },
                                        },
                                    },
                                    "endpoints": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "port": {"type": "string"},
                                                "path": {"type": "string"},
                                                "interval": {
                                                    "type": "string",
                                                    "pattern": DURATION,
                                                },
                                                "scrapeTimeout": {
                                                    "type": "string",
                                                    "pattern": DURATION,
                                                },
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}


def kubectl(cluster: Cluster, *args: str, stdin: str | None = None, timeout: float = 120):
    return run([*cluster.kubectl, *args], timeout, input=stdin)


def fresh_namespace(cluster: Cluster, prefix: str) -> str:
    ns = f"{prefix}-{uuid.uuid4().hex[:8]}"
    doc = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": ns,
            # The API server's Pod Security admission holds the chart's pods to "restricted".
            "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/warn": "restricted",
                "mlgw.dev/test": "deploy",
            },
        },
    }
    out = kubectl(cluster, "create", "-f", "-", stdin=json.dumps(doc))
    assert out.returncode == 0, out.stderr
    return ns


def delete_namespace(cluster: Cluster, ns: str) -> None:
    kubectl(cluster, "delete", "namespace", ns, "--wait=false", "--ignore-not-found")


def ensure_service_monitor_crd(cluster: Cluster) -> None:
    name = SERVICE_MONITOR_CRD["metadata"]["name"]  # type: ignore[index]
    if kubectl(cluster, "get", "crd", name).returncode == 0:
        return
    out = kubectl(
        cluster,
        "apply",
        "--server-side",
        "--field-manager",
        "mlgw-test-deploy",
        "-f",
        "-",
        stdin=json.dumps(SERVICE_MONITOR_CRD),
    )
    assert out.returncode == 0, out.stderr
    out = kubectl(cluster, "wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    assert out.returncode == 0, out.stderr


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    docs: list[dict]


@pytest.fixture(scope="module")
def full_release(tools: Tools, cluster: Cluster) -> Iterator[Release]:
    """The chart with values-full.yaml, installed for real into a fresh namespace (its Role and
    RoleBinding go into team-a); uninstalled afterwards."""
    ensure_service_monitor_crd(cluster)
    ns = fresh_namespace(cluster, "mlgw-chart")
    name = f"mlgw-{uuid.uuid4().hex[:6]}"
    secret = kubectl(
        cluster,
        "-n",
        ns,
        "create",
        "secret",
        "generic",
        "mlgw-aws",
        "--from-literal=access-key-id=testing",
        "--from-literal=secret-access-key=testing",
    )
    assert secret.returncode == 0, secret.stderr
    installed = False
    try:
        docs = render(tools, ns, "-f", str(FULL), release=name)
        out = helm(
            tools,
            "install",
            name,
            str(CHART),
            "--kubeconfig",
            str(cluster.admin),
            "--namespace",
            ns,
            "-f",
            str(FULL),
        )
        assert out.returncode == 0, out.stdout + out.stderr
        installed = True
        yield Release(name=name, namespace=ns, docs=docs)
    finally:
        if installed:
            helm(tools, "uninstall", name, "--kubeconfig", str(cluster.admin), "--namespace", ns)
        delete_namespace(cluster, ns)


def test_full_values_apply_with_a_server_side_dry_run_then_install(
    tools: Tools, cluster: Cluster, full_release: Release
) -> None:
    # A dry run in another fresh namespace: every object is admitted and validated (strict
    # field validation) and nothing is stored.
    ns = fresh_namespace(cluster, "mlgw-dry")
    try:
        name = f"mlgw-{uuid.uuid4().hex[:6]}"
        docs = render(tools, ns, "-f", str(FULL), release=name)
        # kubectl's --namespace cannot go with objects in other namespaces (team-a): each
        # namespaced object names its own, as helm install sets it.
        for d in docs:
            if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
                d["metadata"].setdefault("namespace", ns)
        out = kubectl(
            cluster,
            "apply",
            "--server-side",
            "--dry-run=server",
            "--validate=strict",
            "--field-manager",
            "mlgw-test-deploy",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}),
        )
        assert out.returncode == 0, out.stderr
        assert "serverside-applied (server dry run)" in out.stdout, out.stdout
        assert "would violate PodSecurity" not in out.stderr, out.stderr
        for d in docs:
            where = d["metadata"]["namespace"]
            got = kubectl(cluster, "-n", where, "get", d["kind"], d["metadata"]["name"])
            assert got.returncode != 0 and "NotFound" in got.stderr, (d["kind"], got)
    finally:
        delete_namespace(cluster, ns)

    # The installed release: every rendered object is there, where it was rendered for.
    for d in full_release.docs:
        where = d["metadata"].get("namespace", full_release.namespace)
        got = kubectl(cluster, "-n", where, "get", d["kind"], d["metadata"]["name"], "-o", "json")
        assert got.returncode == 0, (d["kind"], d["metadata"]["name"], got.stderr)
    role = json.loads(
        kubectl(cluster, "-n", "team-a", "get", "role", full_release.name, "-o", "json").stdout
    )
    assert role["rules"] == only(full_release.docs, "Role", "team-a")["rules"]


def test_default_values_install_and_the_pod_runs_under_restricted_pod_security(
    tools: Tools, cluster: Cluster
) -> None:
    ns = fresh_namespace(cluster, "mlgw-default")
    name = "mlgw"
    try:
        out = helm(
            tools,
            "install",
            name,
            str(CHART),
            "--kubeconfig",
            str(cluster.admin),
            "--namespace",
            ns,
            "--wait",
            "--timeout",
            "180s",
        )
        if out.returncode != 0:
            # What the cluster says about why the rollout did not finish.
            seen = kubectl(cluster, "-n", ns, "get", "all,events", "-o", "wide")
            pytest.fail(out.stdout + out.stderr + seen.stdout + seen.stderr)
        # The Deployment's pod was admitted by Pod Security "restricted" and is running (on the
        # cluster's fake node: KWOK plays the kubelet, so the probes and image are not run).
        pods = json.loads(
            kubectl(
                cluster, "-n", ns, "get", "pods", "-l", "app.kubernetes.io/name=mlgw", "-o", "json"
            ).stdout
        )["items"]
        assert len(pods) == 1, pods
        assert pods[0]["status"]["phase"] == "Running"
        assert pods[0]["spec"]["containers"][0]["securityContext"] == RESTRICTED_CONTAINER
        role = json.loads(kubectl(cluster, "-n", ns, "get", "role", name, "-o", "json").stdout)
        assert role["rules"][0] == {
            "apiGroups": ["batch"],
            "resources": ["jobs"],
            "verbs": JOB_VERBS,
        }
    finally:
        helm(tools, "uninstall", name, "--kubeconfig", str(cluster.admin), "--namespace", ns)
        delete_namespace(cluster, ns)


# --- RBAC: sufficient, and no more ---------------------------------------------------------


def _executable(variable: str, what: str) -> str:
    """The executable an environment variable names, or the test fails saying where it comes
    from."""
    path = os.environ.get(variable)
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"{variable} must name {what}", pytrace=False)
    return path


def _binary() -> str:
    return _executable(
        "MLGW_BIN",
        "the gateway binary (tests/run-all sets it to $CARGO_TARGET_DIR/debug/mlgw-under-test)",
    )


@dataclass
class Gateway:
    binary: str
    address: str
    proc: subprocess.Popen[bytes]
    log: Path
    jobs: list[str] = field(default_factory=list)  # removed from the cluster afterwards

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return run([self.binary, *args[:1], "--server", self.address, *args[1:]], timeout)

    def ok(self, *args: str, timeout: float = 180) -> str:
        out = self.cli(*args, timeout=timeout)
        assert out.returncode == 0, (args, out.stdout, out.stderr, self.tail())
        return out.stdout

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


def service_account_token(cluster: Cluster, release: Release) -> str:
    sa = only(release.docs, "ServiceAccount")["metadata"]["name"]
    out = kubectl(cluster, "-n", release.namespace, "create", "token", sa, "--duration", "1h")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture(scope="module")
def sa_gateway(cluster: Cluster, tools: Tools, full_release: Release) -> Iterator[Gateway]:
    """The real gateway on the chart's own rendered config, whose kube grants name no
    kubeconfig, so kube's inferred config is used: outside a pod that is $KUBECONFIG, here a
    kubeconfig holding a token of the chart's ServiceAccount (in a pod, the same account's
    mounted token)."""
    root = Path(tempfile.mkdtemp(prefix="mlgw-chart-rbac-"))
    token = service_account_token(cluster, full_release)
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {"server": cluster.server, "certificate-authority": cluster.ca},
            }
        ],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "test", "user": "sa"}}],
        "current-context": "sa",
    }
    (root / "sa.kubeconfig").write_text(json.dumps(kubeconfig))
    # Exactly what the chart puts in its ConfigMap, but for the metrics port: a free one, as
    # other gateways on this machine may hold 9090.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    docs = render(
        tools,
        full_release.namespace,
        "-f",
        str(FULL),
        "--set",
        f"metrics.port={metrics_port}",
        release=full_release.name,
    )
    (root / "mlgw.toml").write_text(only(docs, "ConfigMap")["data"]["mlgw.toml"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "MLGW_"))}
    env["KUBECONFIG"] = str(root / "sa.kubeconfig")
    env.setdefault("RUST_LOG", "info")
    log = root / "gateway.log"
    binary = _binary()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                "serve",
                "--config",
                str(root / "mlgw.toml"),
                "--data-dir",
                str(root / "data"),
                "--listen",
                "127.0.0.1:0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def listening() -> str | None:
        if proc.poll() is not None:
            pytest.fail(f"the gateway exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        m = re.search(r"mlgw listening on (\S+)", log.read_text(errors="replace"))
        return m.group(1) if m else None

    gw = Gateway(binary, wait_for("the gateway to listen", listening, START_TIMEOUT), proc, log)
    try:
        wait_for("the gateway's targets", lambda: gw.cli("targets").returncode == 0, START_TIMEOUT)
        yield gw
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        # Finished jobs stay on the cluster (the gateway deletes only on cancel).
        for job_id in gw.jobs:
            kubectl(
                cluster,
                "-n",
                "team-a",
                "delete",
                "pytorchjobs",
                "-l",
                f"mlgw.dev/job-id={job_id}",
                "--wait=false",
            )
        if os.environ.get("MLGW_KEEP_DATA"):
            print(f"gateway data and log kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def admin_get(cluster: Cluster, kind: str, selector: str) -> list[dict]:
    out = kubectl(cluster, "-n", "team-a", "get", kind, "-l", selector, "-o", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["items"]


def test_the_service_account_runs_a_kubeflow_job_to_succeeded_and_cancels_one(
    cluster: Cluster, sa_gateway: Gateway
) -> None:
    gw = sa_gateway
    name = f"chart-{uuid.uuid4().hex[:6]}"
    job = json.loads(
        gw.ok(
            "submit",
            "--target",
            "kubeflow",
            "--name",
            name,
            "--hp",
            "C=0.5",
            "-o",
            "json",
            "--",
            "python",
            "-c",
            "print('hello')",
        )
    )
    job_id = job["id"]
    gw.jobs.append(job_id)
    # The job's object was applied (create + patch) and read back (get) with the token.
    wait = gw.cli("wait", job_id, "--timeout", "180", timeout=240)
    got = json.loads(gw.ok("get", job_id, "-o", "json"))
    assert wait.returncode == 0 and got["state"] == "succeeded", (got, wait.stderr, gw.tail())
    (ptj,) = admin_get(cluster, "pytorchjobs", f"mlgw.dev/job-id={job_id}")
    master = ptj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    assert master["metadata"]["annotations"]["mlgw.dev/fake-duration"] == "2s"
    # Its logs: the job's pods listed, each pod's log read.
    lines = gw.ok("logs", job_id)
    assert "fake training log line 1" in lines, lines

    # Cancel deletes the object (delete).
    second = json.loads(
        gw.ok(
            "submit",
            "--target",
            "kubeflow",
            "--name",
            f"{name}-c",
            "-o",
            "json",
            "--",
            "python",
            "-c",
            "print('cancelled')",
        )
    )
    gw.jobs.append(second["id"])
    gw.ok("cancel", second["id"])

    def cancelled() -> bool:
        state = json.loads(gw.ok("get", second["id"], "-o", "json"))["state"]
        return state == "cancelled"

    wait_for("the second job to be cancelled", cancelled, 120)
    assert admin_get(cluster, "pytorchjobs", f"mlgw.dev/job-id={second['id']}") == []


def test_the_service_account_deploys_and_deletes_a_kserve_endpoint(
    cluster: Cluster, sa_gateway: Gateway
) -> None:
    gw = sa_gateway
    name = f"chart-{uuid.uuid4().hex[:6]}"
    ep = json.loads(
        gw.ok(
            "deploy",
            "--target",
            "kserve",
            "--name",
            name,
            "--model-uri",
            "s3://models/iris/v1/",
            "--format",
            "sklearn",
            "-o",
            "json",
        )
    )
    (isvc,) = admin_get(cluster, "inferenceservices", f"mlgw.dev/endpoint-id={ep['id']}")
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "sklearn"}, model
    assert model["storageUri"] == "s3://models/iris/v1/"
    assert model["protocolVersion"] == "v2"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"

    # Delete, then wait (watch) until KServe's finalizer lets the object go.
    gw.ok("undeploy", name)

    def deleted() -> bool:
        listed = json.loads(gw.ok("endpoints", "--all", "-o", "json"))
        return [e["state"] for e in listed if e["id"] == ep["id"]] == ["deleted"]

    wait_for("the endpoint to be deleted", deleted, 120)
    assert admin_get(cluster, "inferenceservices", f"mlgw.dev/endpoint-id={ep['id']}") == []


def test_the_service_account_is_refused_what_the_values_did_not_grant(
    cluster: Cluster, full_release: Release
) -> None:
    token = service_account_token(cluster, full_release)
    context = ssl.create_default_context(cafile=cluster.ca)

    def status(method: str, path: str, body: dict | None = None) -> int:
        req = urllib.request.Request(
            cluster.server + path,
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, context=context, timeout=30) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code

    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "not-granted"},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "busybox", "command": ["true"]}],
                }
            }
        },
    }
    # Granted, as a control: the token is valid and bound.
    assert status("GET", "/api/v1/namespaces/team-a/pods") == 200
    assert status("GET", "/apis/kubeflow.org/v1/namespaces/team-a/pytorchjobs/none") == 404
    refused = {
        "create a batch Job": status("POST", "/apis/batch/v1/namespaces/team-a/jobs", job),
        "list secrets": status("GET", "/api/v1/namespaces/team-a/secrets"),
        "read a pod": status("GET", "/api/v1/namespaces/team-a/pods/any"),
        "watch secrets": status("GET", "/api/v1/namespaces/team-a/secrets?watch=true"),
        "replace a pytorchjob": status(
            "PUT", "/apis/kubeflow.org/v1/namespaces/team-a/pytorchjobs/x", {"kind": "PyTorchJob"}
        ),
        "list pods in team-b": status("GET", "/api/v1/namespaces/team-b/pods"),
        "list pods in its own namespace": status(
            "GET", f"/api/v1/namespaces/{full_release.namespace}/pods"
        ),
    }
    assert refused == dict.fromkeys(refused, 403), refused


# --- the image -----------------------------------------------------------------------------

SOURCE = "https://example.invalid/mlgw"


def workspace_version() -> str:
    m = re.search(
        r'\[workspace\.package\][^\[]*?version = "([^"]+)"', (REPO / "Cargo.toml").read_text()
    )
    assert m
    return m.group(1)


@dataclass(frozen=True)
class Archive:
    path: Path
    files: dict[str, bytes]  # the archive's own entries (layout JSON, blobs)


def _static_binary() -> str:
    return _executable(
        "MLGW_STATIC_BIN",
        "the static gateway binary (tests/run-all builds it: "
        "cargo build -p mlgw --bin mlgw --target x86_64-unknown-linux-musl)",
    )


PT_INTERP = 3


def elf_program_headers(data: bytes) -> set[int]:
    """The program header types of a little-endian ELF64 file: a dynamically linked executable
    has PT_INTERP (its loader), a static one (static-pie included) has none."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not a little-endian ELF64"
    (phoff,) = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    return {struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)}


@pytest.fixture(scope="module")
def image(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """The image exactly as shipped: from the static binary, so without --allow-dynamic."""
    out = tmp_path_factory.mktemp("image") / "mlgw.tar"
    built = run(
        [str(IMAGE_BUILD), "--binary", _static_binary(), "--out", str(out), "--source", SOURCE],
        timeout=600,
        env={**os.environ, "CRANE": tools.crane},
    )
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip().splitlines()[-1] == str(out)
    files = {}
    with tarfile.open(out) as tar:
        for m in tar.getmembers():
            if m.isfile():
                files[m.name] = tar.extractfile(m).read()  # type: ignore[union-attr]
    yield Archive(out, files)
    out.unlink()


def blob(archive: Archive, digest: str) -> bytes:
    algo, hexdigest = digest.split(":")
    data = archive.files[f"blobs/{algo}/{hexdigest}"]
    assert hashlib.sha256(data).hexdigest() == hexdigest, digest
    return data


def test_a_dynamically_linked_binary_is_refused_without_the_flag(tmp_path: Path) -> None:
    out = tmp_path / "mlgw.tar"
    refused = run([str(IMAGE_BUILD), "--binary", _binary(), "--out", str(out), "--source", SOURCE])
    assert refused.returncode == 1, refused
    assert "is dynamically linked" in refused.stderr and "--allow-dynamic" in refused.stderr
    assert not out.exists()
    not_elf = tmp_path / "script"
    not_elf.write_text("#!/bin/sh\n")
    refused = run(
        [str(IMAGE_BUILD), "--binary", str(not_elf), "--out", str(out), "--source", SOURCE]
    )
    assert refused.returncode == 2 and "not a Linux amd64 or arm64 executable" in refused.stderr


def test_the_image_config_and_layer(image: Archive, tools: Tools) -> None:
    assert json.loads(image.files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    (desc,) = json.loads(image.files["index.json"])["manifests"]
    assert desc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    version = workspace_version()
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == version
    manifest = json.loads(blob(image, desc["digest"]))
    config = json.loads(blob(image, manifest["config"]["digest"]))
    assert config["os"] == "linux" and config["architecture"] == "amd64"
    c = config["config"]
    assert c["Entrypoint"] == ["/usr/local/bin/mlgw", "serve", "--config", "/etc/mlgw/mlgw.toml"]
    assert "Cmd" not in c
    assert c["User"] == "65532:65532"
    assert c["ExposedPorts"] == {"50051/tcp": {}, "9090/tcp": {}}
    labels = c["Labels"]
    assert labels["org.opencontainers.image.source"] == SOURCE
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"

    # One layer, on an empty base.
    (layer_desc,) = manifest["layers"]
    assert layer_desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    layer = gzip.decompress(blob(image, layer_desc["digest"]))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        entries = {m.name: (m.type, m.mode, m.uid, m.gid) for m in tar.getmembers()}
        passwd = tar.extractfile("etc/passwd").read().decode()  # type: ignore[union-attr]
        binary = tar.extractfile("usr/local/bin/mlgw").read()  # type: ignore[union-attr]
        certs = tar.extractfile("etc/ssl/certs/ca-certificates.crt").read()  # type: ignore[union-attr]
    d, f = tarfile.DIRTYPE, tarfile.REGTYPE
    assert entries == {
        "etc": (d, 0o755, 0, 0),
        "etc/group": (f, 0o644, 0, 0),
        "etc/mlgw": (d, 0o755, 0, 0),
        "etc/passwd": (f, 0o644, 0, 0),
        "etc/ssl": (d, 0o755, 0, 0),
        "etc/ssl/certs": (d, 0o755, 0, 0),
        "etc/ssl/certs/ca-certificates.crt": (f, 0o644, 0, 0),
        "home": (d, 0o755, 0, 0),
        "home/nonroot": (d, 0o755, 65532, 65532),
        "tmp": (d, 0o1777, 0, 0),
        "usr": (d, 0o755, 0, 0),
        "usr/local": (d, 0o755, 0, 0),
        "usr/local/bin": (d, 0o755, 0, 0),
        "usr/local/bin/mlgw": (f, 0o755, 0, 0),
        "var": (d, 0o755, 0, 0),
        "var/lib": (d, 0o755, 0, 0),
        "var/lib/mlgw": (d, 0o700, 65532, 65532),
    }
    assert "nonroot:x:65532:65532:" in passwd
    assert (
        hashlib.sha256(binary).digest()
        == hashlib.sha256(Path(_static_binary()).read_bytes()).digest()
    )
    assert PT_INTERP not in elf_program_headers(binary), "the image's binary names a loader"
    assert certs == Path("/etc/ssl/certs/ca-certificates.crt").read_bytes()

    # The Docker-format manifest beside the layout names the same blobs, and crane reads the
    # archive through it and checks every digest.
    (docker,) = json.loads(image.files["manifest.json"])
    assert docker["Config"] == "blobs/" + manifest["config"]["digest"].replace(":", "/")
    assert docker["RepoTags"] == [f"mlgw:{version}"]
    validated = run([tools.crane, "validate", "--tarball", str(image.path)], timeout=300)
    assert validated.returncode == 0 and "PASS" in validated.stdout, validated


def test_the_containerfile_describes_the_same_image(image: Archive) -> None:
    text = CONTAINERFILE.read_text()
    (desc,) = json.loads(image.files["index.json"])["manifests"]
    manifest = json.loads(blob(image, desc["digest"]))
    c = json.loads(blob(image, manifest["config"]["digest"]))["config"]
    final = text[text.rindex("FROM scratch") :]
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", final, re.M)
    assert entrypoint and json.loads(entrypoint.group(1)) == c["Entrypoint"]
    assert re.search(r"^USER (\S+)$", final, re.M).group(1) == c["User"]  # type: ignore[union-attr]
    exposed = re.search(r"^EXPOSE (.+)$", final, re.M).group(1).split()  # type: ignore[union-attr]
    assert sorted(exposed) == sorted(c["ExposedPorts"])
    for label in ("source", "version", "licenses"):
        assert f"org.opencontainers.image.{label}=" in final, label
    # The layer's files and its special directories (a text check: Docker is not here to
    # build it), written relative to the stage's /rootfs.
    words = set(re.split(r"[\s;]+", text))
    for path in ("etc/passwd", "etc/group", "etc/ssl/certs/ca-certificates.crt", "etc/mlgw"):
        assert path in words, path
    assert "/rootfs/usr/local/bin/mlgw" in words
    assert re.search(r"chmod 1777 tmp\b", text)
    assert re.search(r"chmod 0700 var/lib/mlgw\b", text)
    assert re.search(r"chown 65532:65532 home/nonroot var/lib/mlgw\b", text)
    assert "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin" in text


# --- the image runs ------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageConfig:
    entrypoint: list[str]
    user: tuple[int, int]
    env: dict[str, str]
    workdir: str
    layer: bytes  # uncompressed


def image_config(image: Archive) -> ImageConfig:
    (desc,) = json.loads(image.files["index.json"])["manifests"]
    manifest = json.loads(blob(image, desc["digest"]))
    c = json.loads(blob(image, manifest["config"]["digest"]))["config"]
    uid, gid = (int(n) for n in c["User"].split(":"))
    (layer,) = manifest["layers"]
    return ImageConfig(
        entrypoint=c["Entrypoint"] + c.get("Cmd", []),
        user=(uid, gid),
        env=dict(e.split("=", 1) for e in c.get("Env", [])),
        workdir=c.get("WorkingDir") or "/",
        layer=gzip.decompress(blob(image, layer["digest"])),
    )


def status_fields(pid: int) -> dict[str, list[str]]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return fields


def grpc_health(address: str) -> int:
    """grpc.health.v1.Health/Check for the whole server: the status field of its answer."""
    with grpc.insecure_channel(address) as channel:
        # An empty HealthCheckRequest (service "") is no bytes; the answer is field 1, a varint.
        answer = channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=10)
    assert answer[:1] == b"\x08" and len(answer) == 2, answer
    return answer[1]


def test_the_image_runs_the_gateway_from_its_own_layer_as_its_user(
    image: Archive, tmp_path: Path
) -> None:
    """What a container runtime does with the image, without one: the layer unpacked as the
    root filesystem, the entrypoint run in it with the image's user, environment and working
    directory, in new mount, PID, UTS and IPC namespaces with /proc mounted (the host's
    network, so the test reaches it on loopback). Nothing from the host is in reach: a
    dynamically linked binary fails to start here, its loader not being in the layer."""
    cfg = image_config(image)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    with tarfile.open(fileobj=io.BytesIO(cfg.layer)) as tar:
        # Our own layer: owners and modes exactly as written (the data dir is uid 65532's).
        tar.extractall(rootfs, numeric_owner=True, filter="fully_trusted")
    (rootfs / "proc").mkdir()  # the runtime's mount point for /proc
    # The entrypoint's config path, where the chart mounts its ConfigMap; the chart's data dir.
    (rootfs / "etc/mlgw/mlgw.toml").write_text(
        'listen = "127.0.0.1:0"\n'
        'data_dir = "/var/lib/mlgw"\n'
        'default_target = "local"\n'
        "[targets.local]\n"
        'plugin = "local"\n'
        "[targets.local.grants.process]\n"
    )
    namespaces = ["--mount", "--uts", "--ipc", "--pid", "--fork", "--kill-child"]
    if os.geteuid() == 0:
        # A runtime's own way (runc without a user namespace): chroot, then the image's user.
        uid, gid = cfg.user
        who = [f"--setgid={gid}", f"--setuid={uid}"]
    else:
        # Unprivileged, only the caller's own uid can be mapped (to root): the user is not
        # the image's, and is not checked below.
        who = ["--user", "--map-root-user"]
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed to run the image without a runtime"
    cmd = [
        unshare,
        *namespaces,
        *who,
        "--mount-proc=/proc",  # mounted inside the new root
        f"--root={rootfs}",
        f"--wd={cfg.workdir}",
        "--",
        *cfg.entrypoint,
    ]
    log = tmp_path / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cfg.env,  # the image's environment, and nothing of the host's
            start_new_session=True,
        )
    try:

        def listening() -> str | None:
            if proc.poll() is not None:
                pytest.fail(f"the image's gateway exited ({proc.returncode}):\n{log.read_text()}")
            m = re.search(r"mlgw listening on (\S+)", log.read_text(errors="replace"))
            return m.group(1) if m else None

        address = wait_for("the image's gateway to listen", listening, START_TIMEOUT)
        # unshare --fork's one child is the entrypoint.
        (pid,) = (
            int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        )
        assert os.readlink(f"/proc/{pid}/root") == str(rootfs)
        assert os.readlink(f"/proc/{pid}/exe") == str(rootfs / "usr/local/bin/mlgw")
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert not re.search(r"\.so(\.\d+)*$", maps, re.M), "a shared library is mapped"
        status = status_fields(pid)
        assert status["NSpid"][-1] == "1"  # PID 1 in its namespace, as in a pod
        if os.geteuid() == 0:
            uid, gid = cfg.user
            assert status["Uid"] == [str(uid)] * 4 and status["Gid"] == [str(gid)] * 4, status
            assert status["Groups"] == []
            assert int(status["CapEff"][0], 16) == 0
            # Its store, written as that user in the image's data dir.
            written = [p for p in (rootfs / "var/lib/mlgw").rglob("*") if p.is_file()]
            assert written and {p.stat().st_uid for p in written} == {uid}, written

        assert grpc_health(address) == 1  # SERVING
        # The host's test binary as the client: the bundled plugin was compiled and
        # instantiated by the image's binary.
        listed = ok([_binary(), "targets", "--server", address, "-o", "json"], timeout=60)
        (target,) = json.loads(listed)
        assert (target["name"], target["plugin"], target["health"]) == (
            "local",
            "local",
            "healthy",
        ), target

        # How a kubelet stops it: SIGTERM to the container's PID 1, which must end cleanly.
        os.kill(pid, signal.SIGTERM)
        wait_for("the image's gateway to stop", lambda: proc.poll() is not None, 30)
        assert proc.returncode == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # --kill-child takes the gateway with it
            proc.wait(timeout=10)
