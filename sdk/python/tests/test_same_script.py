"""The product's promise: one client script runs on every target, changing only ``target=``.

One gateway serves three targets, with its artifact store in the AWS test server's S3:

- ``local``: real processes run the code, a real MLServer serves the model;
- ``sagemaker``: the SageMaker plugin against the AWS test server (``tests/aws``: moto with the
  SageMaker test extension). Nothing runs the code and no model serves there: the server ends
  the job ``Completed`` with a model archive, and InvokeEndpoint answers by the extension's
  fixed rule (``floor(sum of each row) mod 3``), not a model. The predictions are checked
  against that rule and what the plugin sent is read back through the AWS API (boto3);
- ``kubeflow``: PyTorchJobs on the test control plane (``tests/cluster``), reconciled by the
  real Training Operator; KWOK plays the pods, so the logs are KWOK's and nothing serves;
- ``kserve``: InferenceServices on the same control plane, reconciled by KServe's real
  controller (RawDeployment). KWOK plays the predictor's pods, so a real MLServer on loopback
  stands in for the model server inside them: the test loads the model the local job trained
  into it under each InferenceService's name as it appears (:class:`PredictorPods`, named so),
  and the target's ingress URL points at it.

:func:`notebook` is the notebook's script and :func:`serve` its serving half; the tests run
them unchanged on each target.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import _binary, _stop, start_gateway

import mlgw

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
CODE = REPO / "deploy" / "quickstart" / "iris"
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
# The AWS test server's credentials and names (tests/src/aws.rs, tests/aws/up).
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"
REGION = "us-east-1"
ROLE_ARN = "arn:aws:iam::123456789012:role/mlgw-test-sagemaker"
ARTIFACTS_BUCKET = "mlgw-test-artifacts"
SAGEMAKER_BUCKET = "mlgw-test-sagemaker"
# AWS's scikit-learn framework image (the test server pulls nothing).
SKLEARN_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"


def notebook(client: mlgw.Client, target: str, name: str) -> dict[str, object]:
    """The notebook: train the quickstart's iris code and read its logs; where the target
    serves, deploy what it made and ask for predictions. Only ``target`` differs between
    runs; what it asserts holds on every target."""
    job = client.train(
        ["python", "train.py"],
        code=CODE,
        target=target,
        name=name,
        framework="sklearn",
        hyperparameters={"C": 0.5},
        max_runtime=600,
    )
    job.wait(timeout=300, progress=False)
    assert job.state == "succeeded", (job.state, job.message)
    lines = list(job.logs())
    assert lines, "the job logged nothing"
    run: dict[str, object] = {"job": job, "logs": lines}
    if not client.get_target(target).supports("serving"):
        return run

    run.update(serve(client, job, target, name))
    return run


def serve(client: mlgw.Client, model: mlgw.Job | str, target: str, name: str) -> dict[str, object]:
    """The notebook's serving half: deploy a trained model, wait until it answers, ask for
    predictions, delete the endpoint. Only ``target`` differs between runs."""
    ep = client.deploy(model, model_format="sklearn", name=name, target=target)
    try:
        ep.wait_ready(timeout=300)
        y = ep.predict(ROWS).ravel().tolist()
        assert len(y) == len(ROWS) and all(v in (0, 1, 2) for v in y), y
    finally:
        ep.delete()
    return {"endpoint": ep, "predictions": y}


@dataclass(frozen=True)
class Targets:
    address: str
    aws_endpoint: str
    kubectl: list[str]
    pods: PredictorPods


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return 0, str(e).encode()


class PredictorPods:
    """Stands in for the model server inside KServe's predictor pods, which KWOK does not run
    (a test stand-in, named so): one real MLServer on loopback with an empty model repository.
    Once :meth:`serve` names a model file, every kserve InferenceService that appears in
    ``team-a`` gets that model loaded under its own name, as KServe's MLServer runtime serves
    the model under the InferenceService's name. Until then nothing answers for it, so the
    gateway's readiness probe fails and the endpoint stays ``creating``."""

    def __init__(self, python: str, root: Path, kubectl: list[str]) -> None:
        self.port = _free_port()
        self.repo = root / "models"
        self.repo.mkdir(parents=True)
        self._kubectl = kubectl
        self._model: Path | None = None
        self.loaded: list[str] = []
        self._stop = threading.Event()
        (root / "settings.json").write_text(
            json.dumps(
                {
                    "host": "127.0.0.1",
                    "http_port": self.port,
                    "grpc_port": _free_port(),
                    "metrics_port": _free_port(),
                    "parallel_workers": 0,
                    "model_repository_root": str(self.repo),
                    "load_models_at_startup": False,
                }
            )
        )
        self._log = open(root / "mlserver.log", "wb")  # noqa: SIM115 - closed in close()
        self._proc = subprocess.Popen(
            [str(Path(python).parent / "mlserver"), "start", str(root)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while _http("GET", f"{self.url}/v2/health/live")[0] != 200:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                pytest.fail(f"MLServer did not come up; log {root / 'mlserver.log'}")
            time.sleep(0.2)
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(self, model: Path) -> None:
        self._model = model

    def _watch(self) -> None:
        while not self._stop.wait(0.3):
            if self._model is None:
                continue
            out = subprocess.run(
                [
                    *self._kubectl,
                    "-n",
                    "team-a",
                    "get",
                    "inferenceservices",
                    "-l",
                    "mlgw.dev/target=kserve",
                    "-o",
                    "json",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if out.returncode != 0:
                continue
            for item in json.loads(out.stdout)["items"]:
                name = item["metadata"]["name"]
                if name not in self.loaded and self._load(name, self._model):
                    self.loaded.append(name)

    def _load(self, name: str, model: Path) -> bool:
        settings = {
            "name": name,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": str(model)},
        }
        (self.repo / name).mkdir(exist_ok=True)
        (self.repo / name / "model-settings.json").write_text(json.dumps(settings))
        return _http("POST", f"{self.url}/v2/repository/models/{name}/load", b"")[0] == 200

    def infer(self, name: str, rows: list[list[float]]) -> list[int]:
        """What the model server answers when asked directly, bypassing the gateway."""
        body = {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [len(rows), len(rows[0])],
                    "datatype": "FP64",
                    "data": [v for row in rows for v in row],
                }
            ]
        }
        status, out = _http("POST", f"{self.url}/v2/models/{name}/infer", json.dumps(body).encode())
        assert status == 200, (status, out)
        return [int(v) for v in json.loads(out)["outputs"][0]["data"]]

    def close(self) -> None:
        self._stop.set()
        _stop(self._proc)
        self._log.close()


def _aws_endpoint() -> str:
    """The AWS test server ``tests/run-all`` started, else one started here (``up`` is
    idempotent and leaves it running for the next test run)."""
    endpoint = os.environ.get("MLGW_TEST_AWS_ENDPOINT")
    if endpoint:
        return endpoint
    out = subprocess.run(
        [str(REPO / "tests" / "aws" / "up")], check=True, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


def _admin_kubeconfig() -> Path:
    """The test control plane's admin kubeconfig: ``tests/run-all``'s, else ``up``'s."""
    kubeconfig = os.environ.get("MLGW_TEST_KUBECONFIG")
    if not kubeconfig:
        out = subprocess.run(
            [str(REPO / "tests" / "cluster" / "up")], check=True, capture_output=True, text=True
        )
        kubeconfig = out.stdout.strip().splitlines()[-1]
    return Path(kubeconfig)


def _aws(aws_endpoint: str, service: str, operation: str, request: dict[str, object]) -> dict:
    """One AWS API call on the test server through boto3 (tests/aws/readback.py)."""
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "aws" / "readback.py"),
            "--endpoint",
            aws_endpoint,
            service,
            operation,
            json.dumps(request),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **_aws_env()},
        timeout=60,
    )
    assert out.returncode == 0, (service, operation, out.stdout, out.stderr)
    return json.loads(out.stdout)


def _aws_env() -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": "/nonexistent/mlgw-test/config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/mlgw-test/credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def _config(aws: str, prefix: str, python: str, kubeconfig: Path, ingress: str) -> str:
    kinds = '["kubeflow.org/v1/PyTorchJob", "v1/Pod"]'
    return f"""
default_target = "local"

[artifacts]
store = "s3"

[artifacts.s3]
bucket = "{ARTIFACTS_BUCKET}"
prefix = "{prefix}"
region = "{REGION}"
endpoint_url = "{aws}"
force_path_style = true

[targets.local]
plugin = "local"
settings = {{ mlserver = "{Path(python).parent / "mlserver"}" }}

[targets.local.grants.process]

[targets.sagemaker]
plugin = "sagemaker"

[targets.sagemaker.settings]
output_path = "s3://{SAGEMAKER_BUCKET}/{prefix}/output"
training_images = {{ sklearn = "{SKLEARN_IMAGE}" }}
serving_images = {{ sklearn = "{SKLEARN_IMAGE}" }}

[targets.sagemaker.grants.sagemaker]
region = "{REGION}"
role_arn = "{ROLE_ARN}"
endpoint_url = "{aws}"
input_prefixes = ["s3://{ARTIFACTS_BUCKET}/{prefix}/", "s3://{SAGEMAKER_BUCKET}/{prefix}/"]
output_prefixes = ["s3://{SAGEMAKER_BUCKET}/{prefix}/"]
tags = {{ team = "sdk-tests" }}

[targets.kubeflow]
plugin = "kubeflow"

[targets.kubeflow.settings]
images = {{ sklearn = "python:3.12" }}
output_prefix = "s3://{SAGEMAKER_BUCKET}/{prefix}/kubeflow"
pod_check_seconds = 1
pod_annotations = {{ "mlgw.dev/fake-duration" = "2s" }}

[targets.kubeflow.grants.kube]
kubeconfig = "{kubeconfig}"
namespaces = ["team-a"]
kinds = {kinds}

[targets.kserve]
plugin = "kserve"

[targets.kserve.settings]
namespace = "team-a"
ingress_url = "{ingress}"
delete_wait_seconds = 10

[targets.kserve.grants.kube]
kubeconfig = "{kubeconfig}"
namespaces = ["team-a"]
kinds = ["serving.kserve.io/v1beta1/InferenceService"]

# KServe's hosts are <name>-<namespace>.example.com (the test cluster's domain); the ingress
# (here the stand-in model server) is on loopback.
[targets.kserve.routes]
hosts = ["*.example.com"]
cidrs = ["127.0.0.1/32"]
allow_host_header = true
"""


@pytest.fixture(scope="module")
def targets(python_exe: str) -> Iterator[Targets]:
    aws = _aws_endpoint()
    admin = _admin_kubeconfig()
    kubectl = [str(admin.parent / "bin" / "kubectl"), "--kubeconfig", str(admin)]
    root = Path(tempfile.mkdtemp(prefix="mlgw-same-script-"))
    prefix = f"same-script-{uuid.uuid4().hex[:8]}"
    pods = PredictorPods(python_exe, root / "predictor", kubectl)
    config = root / "mlgw.toml"
    # The gateway's own kubeconfig, bound by the cluster's RBAC to the Role a gateway gets.
    gateway_kubeconfig = admin.parent / "mlgw-gateway.kubeconfig"
    config.write_text(_config(aws, prefix, python_exe, gateway_kubeconfig, pods.url))
    env = {**os.environ, **_aws_env()}
    env["PATH"] = os.pathsep.join([str(Path(python_exe).parent), env.get("PATH", "")])
    env.pop("MLGW_SERVER", None)
    env.setdefault("RUST_LOG", "info")
    proc, address = start_gateway(_binary(), root, env, root / "gateway.log", config)
    try:
        yield Targets(address=address, aws_endpoint=aws, kubectl=kubectl, pods=pods)
    finally:
        _stop(proc)
        pods.close()
        if os.environ.get("MLGW_KEEP_DATA"):
            print(f"\ngateway data and log kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def _name(backend_ref: str) -> str:
    """A SageMaker resource's name from the backend ref the plugin reports (its ARN)."""
    return backend_ref.rsplit("/", 1)[-1]


def _rule(rows: list[list[float]]) -> list[int]:
    """The AWS test server's InvokeEndpoint answer (tests/aws/moto_sagemaker_extension.py)."""
    return [math.floor(sum(r)) % 3 for r in rows]


def test_every_target_is_listed_with_its_features(targets: Targets) -> None:
    with mlgw.Client(targets.address) as client:
        listed = {t.name: t for t in client.targets()}
    assert set(listed) == {"local", "sagemaker", "kubeflow", "kserve"}
    sm = listed["sagemaker"]
    assert sm.plugin == "sagemaker" and sm.healthy, sm
    for feature in ("training", "training-logs", "training-cancel", "serving", "canary"):
        assert sm.supports(feature), feature
    assert "sagemaker" in sm.grants
    kf = listed["kubeflow"]
    assert kf.healthy and kf.supports("training-cancel") and not kf.supports("serving"), kf
    ks = listed["kserve"]
    assert ks.healthy and ks.supports("serving") and not ks.supports("training"), ks


@pytest.mark.parametrize("target", ["local", "sagemaker", "kubeflow"])
def test_the_same_script_on_every_target(targets: Targets, target: str) -> None:
    name = f"same-{target}-{uuid.uuid4().hex[:6]}"
    with mlgw.Client(targets.address) as client:
        run = notebook(client, target, name)
        if "endpoint" in run:
            ep: mlgw.Endpoint = run["endpoint"]  # type: ignore[assignment]
            assert ep.refresh().state == "deleted"
    job: mlgw.Job = run["job"]  # type: ignore[assignment]
    lines: list[str] = run["logs"]  # type: ignore[assignment]
    assert job.code_uri.startswith(f"s3://{ARTIFACTS_BUCKET}/"), job.code_uri
    assert job.output_uri.startswith("s3://"), job.output_uri

    if target == "local":
        # The code really ran, with the hyperparameter, and a real model answered: the iris
        # classes, the setosa row first.
        assert any("C=0.5" in line for line in lines), lines
        assert run["predictions"][0] == 0  # type: ignore[index]
    elif target == "sagemaker":
        _check_on_sagemaker(targets.aws_endpoint, job, ep, run["predictions"])  # type: ignore[arg-type]
    else:
        _check_on_kubernetes(targets.kubectl, job, lines)


def _check_on_sagemaker(aws: str, job: mlgw.Job, ep: mlgw.Endpoint, predictions: list) -> None:
    """What the plugin asked of SageMaker, read back through its API."""
    d = _aws(aws, "sagemaker", "DescribeTrainingJob", {"TrainingJobName": _name(job.backend_ref)})
    assert d["RoleArn"] == ROLE_ARN
    # Code handed over as SageMaker's own framework estimators do.
    assert d["HyperParameters"]["sagemaker_program"] == json.dumps("train.py")
    assert d["HyperParameters"]["sagemaker_submit_directory"] == json.dumps(job.code_uri)
    assert d["HyperParameters"]["C"] == "0.5"
    assert d["AlgorithmSpecification"]["TrainingImage"] == SKLEARN_IMAGE
    tags = _aws(aws, "sagemaker", "ListTags", {"ResourceArn": d["TrainingJobArn"]})["Tags"]
    tags = {t["Key"]: t["Value"] for t in tags}
    assert tags["mlgw:resource-id"] == job.id and tags["mlgw:target"] == "sagemaker"
    assert tags["team"] == "sdk-tests"
    assert job.output_uri == d["ModelArtifacts"]["S3ModelArtifacts"]
    # Not a model's answer: the test server's rule, computed from the rows sent.
    assert predictions == _rule(ROWS)
    # Deleted means deleted on SageMaker too: no endpoint of that name is left.
    endpoint_name = _name(ep.backend_ref)
    left = _aws(aws, "sagemaker", "ListEndpoints", {"NameContains": endpoint_name})
    assert [e for e in left["Endpoints"] if e["EndpointName"] == endpoint_name] == []


def _check_on_kubernetes(kubectl: list[str], job: mlgw.Job, lines: list[str]) -> None:
    """The PyTorchJob the Training Operator ran, read back with the admin kubeconfig."""
    name = job.backend_ref.rsplit("/", 1)[-1]
    out = subprocess.run(
        [*kubectl, "-n", "team-a", "get", "pytorchjob", name, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    ptj = json.loads(out.stdout)
    assert ptj["metadata"]["labels"]["mlgw.dev/job-id"] == job.id
    conditions = {c["type"]: c["status"] for c in ptj["status"]["conditions"]}
    assert conditions.get("Succeeded") == "True", conditions
    master = ptj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    (main,) = [c for c in master["containers"] if c["name"] == "pytorch"]
    assert main["image"] == "python:3.12" and main["command"] == ["python", "train.py"]
    env = {e["name"]: e.get("value") for e in main.get("env", [])}
    assert env["MLGW_HP_C"] == "0.5", env
    # KWOK plays the pod: its log lines, read through the API server.
    assert lines == [f"fake training log line {i}" for i in (1, 2, 3)], lines


def _download_model(aws: str, output_uri: str, into: Path) -> Path:
    """The model file a local job wrote to its S3 output, fetched with boto3."""
    import boto3

    bucket, _, prefix = output_uri.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=aws, **_boto_credentials())
    keys = [
        o["Key"]
        for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        if o["Key"].endswith("model.joblib")
    ]
    assert len(keys) == 1, (output_uri, keys)
    path = into / "model.joblib"
    s3.download_file(bucket, keys[0], str(path))
    return path


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": ACCESS_KEY_ID,
        "aws_secret_access_key": SECRET_ACCESS_KEY,
        "region_name": REGION,
    }


def _isvcs(kubectl: list[str], endpoint_id: str) -> list[dict]:
    out = subprocess.run(
        [
            *kubectl,
            "-n",
            "team-a",
            "get",
            "inferenceservices",
            "-l",
            f"mlgw.dev/endpoint-id={endpoint_id}",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["items"]


def test_the_same_serving_script_on_local_and_kserve(targets: Targets, tmp_path: Path) -> None:
    """deploy → wait_ready → predict → delete, unchanged on ``local`` and ``kserve``, serving
    the model one local job trained; both answer what the model itself answers."""
    with mlgw.Client(targets.address) as client:
        job = client.train(
            ["python", "train.py"],
            code=CODE,
            target="local",
            name=f"serve-src-{uuid.uuid4().hex[:6]}",
            max_runtime=600,
        )
        job.wait(timeout=300, progress=False)
        assert job.state == "succeeded", (job.state, job.message)
        targets.pods.serve(_download_model(targets.aws_endpoint, job.output_uri, tmp_path))

        runs = {}
        for target in ("local", "kserve"):
            runs[target] = serve(client, job, target, f"serve-{target}-{uuid.uuid4().hex[:6]}")
            ep: mlgw.Endpoint = runs[target]["endpoint"]  # type: ignore[assignment]
            assert ep.refresh().state == "deleted", (target, ep.state, ep.message)

    kserve: mlgw.Endpoint = runs["kserve"]["endpoint"]  # type: ignore[assignment]
    namespace, _, isvc = kserve.backend_ref.partition("/")
    assert namespace == "team-a", kserve.backend_ref
    # The kserve endpoint's answers came from the model server behind the ingress, loaded
    # under the InferenceService's name, and equal asking that server directly — and the
    # local target's real MLServer serving the same model file.
    assert isvc in targets.pods.loaded, (isvc, targets.pods.loaded)
    direct = targets.pods.infer(isvc, ROWS)
    assert runs["kserve"]["predictions"] == direct
    assert runs["local"]["predictions"] == direct
    assert direct[0] == 0  # the setosa row: a real model, not a constant
    # Deleted on the cluster too.
    assert _isvcs(targets.kubectl, kserve.id) == []
