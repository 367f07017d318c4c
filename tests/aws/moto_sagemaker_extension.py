"""Test extension of moto (not moto itself, not AWS): a SageMaker API server for mlgw's tests.

moto 5.2.5's SageMaker backend creates training jobs already Completed and endpoints already
InService, has no StopTrainingJob or UpdateEndpoint (HTTP 500), writes no training logs and
answers InvokeEndpoint with a fixed string. This launcher patches those gaps in the moto it
imports (the test venv's, `moto[server]==5.2.5`) and then serves moto on loopback, so the
SageMaker target is tested through real AWS APIs (boto3, the AWS SDK for Rust) with SigV4.

What the extension adds, each patch naming the moto gap it fills:
- Training jobs start InProgress (SecondaryStatus Starting, then Training) and, with time moving
  on its own, end as the caller's tags (or, failing those, the job's Environment) say:
    mlgw-test:outcome        Completed (default) | Failed | Running (runs until stopped)
    mlgw-test:duration-ms    from creation to the end (default 1000)
    mlgw-test:failure-reason the FailureReason of a Failed job
  (environment: MLGW_TEST_OUTCOME, MLGW_TEST_DURATION_MS, MLGW_TEST_FAILURE_REASON). A Completed
  job writes <S3OutputPath>/<job>/output/model.tar.gz into moto's S3 (a tarball holding
  model.json, not a real model) and reports it as ModelArtifacts.S3ModelArtifacts; if the output
  bucket does not exist the job fails, as on SageMaker.
- StopTrainingJob: InProgress -> Stopping, Stopped 300 ms later.
- CloudWatch Logs: while a job trains, group /aws/sagemaker/TrainingJobs gets one stream per
  instance, `<job>/algo-<i>-<epoch seconds>`, with the lines
    algo-<i> hyperparameters {"k": "v", ...}     (as created, keys sorted)
    algo-<i> channels train,validation           (InputDataConfig's names, in order)
    algo-<i> entrypoint [...] arguments [...]     (ContainerEntrypoint / ContainerArguments)
    algo-<i> epoch <n> loss <1/(n+1)>             (every 200 ms of training)
    algo-<i> training complete | algo-<i> error: <reason> | algo-<i> stopped
  FilterLogEvents honours logStreamNamePrefix and merges streams in time order (moto ignores
  the prefix and, without `interleaved`, returns stream after stream).
- Endpoints go Creating -> InService after mlgw-test:duration-ms (default 1000) of the
  CreateEndpoint tags, or Failed when mlgw-test:outcome=Failed is tagged, a variant's model has
  MLGW_TEST_OUTCOME=Failed in its container environment, or its ModelDataUrl names no object in
  moto's S3. UpdateEndpoint: Updating, then InService on the new config with its variants and
  weights (a failing new config rolls back to the old one with a FailureReason).
- Creating a training job, model, endpoint config or endpoint under a name in use fails as on
  SageMaker (moto overwrites the old one).
- sagemaker-runtime InvokeEndpoint answers Open Inference Protocol V2 JSON computed by a fixed
  rule, not by any model: for {"inputs": [{"name", "shape": [rows, ...], "datatype", "data"}]}
  it answers {"model_name": <endpoint>, "outputs": [{"name": "predict", "shape": [rows],
  "datatype": "INT64", "data": [floor(sum of row r) mod 3 for each row r of the first input]}]}.
  x-Amzn-Invoked-Production-Variant is the request's TargetVariant, else the variant of the
  highest weight (SageMaker picks at random by weight; tests need to know).
- Requests signed with the access key MLGWTESTREFUSED are refused as AWS refuses an unknown key,
  for tests of bad credentials. GET /mlgw-test/health answers 200 (how tests/aws/up knows it is
  this server).

Time is evaluated lazily: before every request the server moves every live job and endpoint to
where its clock says, under one lock that SageMaker and CloudWatch requests also hold, so every
read sees one consistent state and timestamps are the nominal ones (creation + duration).

Usage: python moto_sagemaker_extension.py [--host 127.0.0.1] [--port 0] [--endpoint-file F]
(F receives http://host:port once the server is listening).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import signal
import sys
import tarfile
import threading
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote

from moto.core.responses import ActionResult, EmptyResult
from moto.logs.exceptions import InvalidParameterException, ResourceNotFoundException
from moto.logs.models import logs_backends
from moto.logs.responses import LogsResponse
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.s3.models import s3_backends
from moto.sagemaker.exceptions import ResourceInUseException, ValidationError
from moto.sagemaker.models import (
    FakeEndpoint,
    FakeTrainingJob,
    SageMakerModelBackend,
    sagemaker_backends,
)
from moto.sagemaker.responses import SageMakerResponse
from moto.sagemaker.utils import arn_formatter
from moto.sagemakerruntime.responses import SageMakerRuntimeResponse
from moto.utilities.utils import get_partition
from werkzeug.serving import make_server

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TAG_OUTCOME = "mlgw-test:outcome"
TAG_DURATION = "mlgw-test:duration-ms"
TAG_REASON = "mlgw-test:failure-reason"
ENV_OUTCOME = "MLGW_TEST_OUTCOME"
ENV_DURATION = "MLGW_TEST_DURATION_MS"
ENV_REASON = "MLGW_TEST_FAILURE_REASON"
REFUSED_ACCESS_KEY_ID = "MLGWTESTREFUSED"
DEFAULT_DURATION_MS = 1000
STARTING_MS = 200
EPOCH_MS = 200
STOPPING_MS = 300

LOCK = threading.RLock()
# Live work, keyed by ARN: what still has to happen as time moves on.
RUNS: dict[str, TrainingRun | EndpointRun] = {}


def now_ms() -> int:
    return int(time.time() * 1000)


def stamp(ms: int) -> datetime:
    # moto keeps naive UTC datetimes; its serializer turns them into epoch seconds.
    return datetime.fromtimestamp(ms / 1000, timezone.utc).replace(tzinfo=None)


def clock_settings(tags: list[dict[str, str]] | None, env: dict[str, str] | None) -> dict:
    """The mlgw-test settings from tags first, then environment; a bad value is refused."""
    tags = {t["Key"]: t["Value"] for t in tags or []}
    env = env or {}
    out = {}
    for key, tag, var in (
        ("outcome", TAG_OUTCOME, ENV_OUTCOME),
        ("duration", TAG_DURATION, ENV_DURATION),
        ("reason", TAG_REASON, ENV_REASON),
    ):
        value = tags.get(tag, env.get(var))
        if value is not None:
            out[key] = value
    if "duration" in out:
        try:
            out["duration"] = int(out["duration"])
            if out["duration"] < 0:
                raise ValueError
        except ValueError:
            raise ValidationError(
                f"{TAG_DURATION} must be a whole number of milliseconds, not "
                f"{out['duration']!r} (moto test extension)"
            ) from None
    return out


def check_outcome(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValidationError(
            f"{TAG_OUTCOME} must be one of {', '.join(allowed)}, not {value!r} "
            "(moto test extension)"
        )
    return value


def s3_backend(backend: SageMakerModelBackend):
    return s3_backends[backend.account_id][get_partition(backend.region_name)]


def split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


class TrainingRun:
    """A training job's clock: what it does from creation until it ends."""

    def __init__(self, backend: SageMakerModelBackend, job: FakeTrainingJob, settings: dict):
        self.backend = backend
        self.job = job
        self.outcome = check_outcome(
            settings.get("outcome", "Completed"), ("Completed", "Failed", "Running")
        )
        self.reason = settings.get(
            "reason",
            f"AlgorithmError: failed by the moto test extension as asked ({TAG_OUTCOME} or "
            f"{ENV_OUTCOME} = Failed)",
        )
        duration = settings.get("duration", DEFAULT_DURATION_MS)
        self.created = now_ms()
        self.training_at = self.created + min(STARTING_MS, duration // 4)
        self.end_at = None if self.outcome == "Running" else self.created + duration
        self.stop_at: int | None = None
        self.training = False
        self.epochs = 0
        self.streams: list[str] = []

        job.creation_time = job.last_modified_time = stamp(self.created)
        job.training_job_status = "InProgress"
        job.secondary_status = "Starting"
        job.secondary_status_transitions = []
        job.training_start_time = None
        job.training_end_time = None
        job.model_artifacts = None
        job.failure_reason = None
        self.transition("Starting", self.created, "Launching requested ML instances")

    def transition(self, status: str, at: int, message: str) -> None:
        steps = self.job.secondary_status_transitions
        if steps and "EndTime" not in steps[-1]:
            steps[-1]["EndTime"] = stamp(at)
        steps.append({"Status": status, "StartTime": stamp(at), "StatusMessage": message})
        self.job.secondary_status = status
        self.job.last_modified_time = stamp(at)

    def log(self, at: int, line) -> None:
        logs = logs_backends[self.backend.account_id][self.backend.region_name]
        for i, stream in enumerate(self.streams, start=1):
            logs.put_log_events(
                LOG_GROUP, stream, [{"timestamp": at, "message": line(f"algo-{i}")}]
            )

    def start_training(self) -> None:
        at, job = self.training_at, self.job
        self.training = True
        job.training_start_time = stamp(at)
        self.transition("Training", at, "Training image download completed. Training in progress.")
        logs = logs_backends[self.backend.account_id][self.backend.region_name]
        logs.ensure_log_group(LOG_GROUP)
        count = int((job.resource_config or {}).get("InstanceCount") or 1)
        self.streams = [
            f"{job.training_job_name}/algo-{i}-{at // 1000}" for i in range(1, count + 1)
        ]
        for stream in self.streams:
            logs.ensure_log_stream(LOG_GROUP, stream)
        hps = json.dumps(job.hyper_parameters or {}, sort_keys=True)
        channels = ",".join(c["ChannelName"] for c in job.input_data_config or []) or "(none)"
        spec = job.algorithm_specification or {}
        entry = json.dumps(spec.get("ContainerEntrypoint") or [])
        args = json.dumps(spec.get("ContainerArguments") or [])
        self.log(at, lambda host: f"{host} hyperparameters {hps}")
        self.log(at, lambda host: f"{host} channels {channels}")
        self.log(at, lambda host: f"{host} entrypoint {entry} arguments {args}")

    def log_epochs(self, until: int) -> None:
        while self.training_at + (self.epochs + 1) * EPOCH_MS <= until:
            self.epochs += 1
            n = self.epochs
            self.log(
                self.training_at + n * EPOCH_MS,
                lambda host, n=n: f"{host} epoch {n} loss {1 / (n + 1):.4f}",
            )

    def advance(self, now: int) -> bool:
        """Moves the job to `now`; True once it has ended."""
        stopped_first = self.stop_at is not None and self.stop_at <= self.training_at
        if not self.training and self.training_at <= now and not stopped_first:
            self.start_training()
        if self.training:
            horizon = min(t for t in (now, self.end_at, self.stop_at) if t is not None)
            self.log_epochs(horizon)
        if self.stop_at is not None:
            if now >= self.stop_at + STOPPING_MS:
                self.finish("Stopped", self.stop_at + STOPPING_MS)
                return True
        elif self.end_at is not None and now >= self.end_at:
            self.finish(self.outcome, self.end_at)
            return True
        return False

    def stop(self, now: int) -> None:
        self.advance(now)
        status = self.job.training_job_status
        if status != "InProgress":
            raise ValidationError(
                f"The request was rejected because the training job is in status {status}."
            )
        self.stop_at = now
        self.job.training_job_status = "Stopping"
        self.transition("Stopping", now, "Stopping the training job")

    def finish(self, outcome: str, at: int) -> None:
        job = self.job
        if outcome == "Completed":
            output = job.output_data_config["S3OutputPath"].rstrip("/")
            uri = f"{output}/{job.training_job_name}/output/model.tar.gz"
            try:
                self.write_model(uri)
            except Exception as e:  # any S3 failure fails the job, as on SageMaker
                outcome, self.reason = "Failed", f"ClientError: could not upload {uri}: {e}"
            else:
                self.transition("Uploading", at, "Uploading generated training model")
                self.log(at, lambda host: f"{host} training complete")
                job.model_artifacts = {"S3ModelArtifacts": uri}
        if outcome == "Failed":
            job.failure_reason = self.reason
            self.log(at, lambda host: f"{host} error: {self.reason}")
        if outcome == "Stopped":
            self.log(at, lambda host: f"{host} stopped")
        self.transition(outcome, at, f"Training job {outcome.lower()}")
        job.secondary_status_transitions[-1]["EndTime"] = stamp(at)
        job.training_end_time = stamp(at)
        # Last, so a reader never sees the status before what comes with it.
        job.training_job_status = outcome

    def write_model(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        model = json.dumps(
            {
                "training_job": self.job.training_job_name,
                "hyperparameters": self.job.hyper_parameters or {},
                "written_by": "the moto test extension (not a real model)",
            },
            sort_keys=True,
        ).encode()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            info = tarfile.TarInfo("model.json")
            info.size = len(model)
            tar.addfile(info, io.BytesIO(model))
        s3 = s3_backend(self.backend)
        s3.get_bucket(bucket)  # MissingBucket if absent
        s3.put_object(bucket, key, buf.getvalue())


class EndpointRun:
    """An endpoint's clock while it is Creating or Updating."""

    def __init__(self, backend: SageMakerModelBackend, endpoint: FakeEndpoint, settings: dict):
        self.backend = backend
        self.endpoint = endpoint
        self.outcome = check_outcome(settings.get("outcome", "InService"), ("InService", "Failed"))
        self.reason = settings.get(
            "reason", f"failed by the moto test extension ({TAG_OUTCOME}=Failed)"
        )
        self.duration = settings.get("duration", DEFAULT_DURATION_MS)
        self.ready_at = now_ms() + self.duration
        self.pending = True
        self.new_config: str | None = None
        endpoint.endpoint_status = "Creating"
        endpoint.production_variants = None
        endpoint.failure_reason = None
        endpoint.pending_deployment_summary = None

    def update(self, config_name: str) -> None:
        status = self.endpoint.endpoint_status
        if status != "InService":
            raise ValidationError(
                f'Cannot update in-progress endpoint "{self.endpoint.arn}".'
                if status in ("Creating", "Updating")
                else f'Cannot update endpoint "{self.endpoint.arn}" in status {status}.'
            )
        self.new_config = config_name
        self.ready_at = now_ms() + self.duration
        self.pending = True
        self.endpoint.endpoint_status = "Updating"
        self.endpoint.failure_reason = None
        self.endpoint.pending_deployment_summary = {"EndpointConfigName": config_name}

    def failure(self, config_name: str) -> str | None:
        """Why the variants of `config_name` cannot serve, or None."""
        if self.outcome == "Failed" and self.new_config is None:
            return self.reason
        config = self.backend.endpoint_configs.get(config_name)
        if config is None:
            return f"Could not find endpoint configuration '{config_name}'."
        for variant in config.production_variants:
            model = self.backend._models.get(variant["ModelName"])
            if model is None:
                return f"Could not find model '{variant['ModelName']}'."
            containers = [model.primary_container or {}, *(model.containers or [])]
            for c in containers:
                if (c.get("Environment") or {}).get(ENV_OUTCOME) == "Failed":
                    return (
                        f"model {model.model_name}: failed by the moto test extension "
                        f"({ENV_OUTCOME}=Failed)"
                    )
                url = c.get("ModelDataUrl") or (
                    (c.get("ModelDataSource") or {}).get("S3DataSource") or {}
                ).get("S3Uri")
                if url and not self.s3_has(url):
                    return (
                        "Failed to download model data for container of model "
                        f'"{model.model_name}" from URL: "{url}". Please ensure that there is an '
                        "object located at the URL and that the role passed to CreateModel has "
                        "permissions to download it."
                    )
        return None

    def s3_has(self, url: str) -> bool:
        try:
            bucket, key = split_s3(url)
            keys = s3_backend(self.backend).get_bucket(bucket).keys
        except Exception:  # not a URI or no bucket: nothing to download
            return False
        prefix = key.rstrip("/") + "/"
        return key in keys or any(k.startswith(prefix) for k in keys)

    def variants(self, config_name: str) -> list[dict[str, Any]]:
        out = []
        for v in self.backend.endpoint_configs[config_name].production_variants:
            weight = float(v.get("InitialVariantWeight", 1.0))
            count = int(v.get("InitialInstanceCount", 1))
            out.append(
                {
                    "VariantName": v["VariantName"],
                    "CurrentWeight": weight,
                    "DesiredWeight": weight,
                    "CurrentInstanceCount": count,
                    "DesiredInstanceCount": count,
                }
            )
        return out

    def advance(self, now: int) -> bool:
        if not self.pending or now < self.ready_at:
            return False
        self.pending = False
        e = self.endpoint
        config = self.new_config or e.endpoint_config_name
        reason = self.failure(config)
        if self.new_config is None and reason:
            e.failure_reason, e.endpoint_status = reason, "Failed"
        elif reason:
            e.failure_reason = f"{reason} The endpoint was rolled back to its previous config."
        else:
            e.endpoint_config_name = config
            e.production_variants = self.variants(config)
        e.pending_deployment_summary = None
        e.last_modified_time = stamp(self.ready_at)
        if e.endpoint_status != "Failed":
            e.endpoint_status = "InService"
        self.new_config = None
        return True


def advance_all() -> None:
    now = now_ms()
    with LOCK:
        for arn, run in list(RUNS.items()):
            if run.advance(now) and isinstance(run, TrainingRun):
                del RUNS[arn]


# --- SageMaker API patches ----------------------------------------------------------------


def in_use(kind: str, arn: str) -> ValidationError:
    return ValidationError(f'Cannot create already existing {kind} "{arn}".')


_create_training_job = SageMakerResponse.create_training_job
_create_model = SageMakerResponse.create_model
_create_endpoint_config = SageMakerResponse.create_endpoint_config
_create_endpoint = SageMakerResponse.create_endpoint
_delete_endpoint = SageMakerResponse.delete_endpoint


def create_training_job(self: SageMakerResponse) -> ActionResult:
    """Fills: moto creates the job Completed, overwrites a job of the same name and drops
    Environment; here it starts InProgress, runs on a clock and a reused name is refused."""
    backend, name = self.sagemaker_backend, self._get_param("TrainingJobName")
    env = self._get_param("Environment") or {}
    with LOCK:
        if name in backend.training_jobs:
            raise ResourceInUseException(
                "Training job names must be unique within an AWS account and region, and a "
                f"training job with this name already exists ({backend.training_jobs[name].arn})"
            )
        settings = clock_settings(self._get_param("Tags"), env)
        check_outcome(settings.get("outcome", "Completed"), ("Completed", "Failed", "Running"))
        result = _create_training_job(self)
        job = backend.training_jobs[name]
        job.environment = env or None
        RUNS[job.arn] = TrainingRun(backend, job, settings)
    return result


def stop_training_job(self: SageMakerResponse) -> ActionResult:
    """Fills: moto has no StopTrainingJob (HTTP 500)."""
    backend, name = self.sagemaker_backend, self._get_param("TrainingJobName")
    with LOCK:
        job = backend.training_jobs.get(name)
        if job is None:
            arn = FakeTrainingJob.arn_formatter(name, backend.account_id, backend.region_name)
            raise ValidationError(f"Could not find training job '{arn}'.")
        run = RUNS.get(job.arn)
        if run is None:
            raise ValidationError(
                "The request was rejected because the training job is in status "
                f"{job.training_job_status}."
            )
        run.stop(now_ms())
    return EmptyResult()


def create_model(self: SageMakerResponse) -> ActionResult:
    """Fills: moto overwrites a model of the same name."""
    backend, name = self.sagemaker_backend, self._get_param("ModelName")
    with LOCK:
        if name in backend._models:
            raise in_use("model", backend._models[name].arn)
        return _create_model(self)


def create_endpoint_config(self: SageMakerResponse) -> ActionResult:
    """Fills: moto overwrites an endpoint config of the same name."""
    backend, name = self.sagemaker_backend, self._get_param("EndpointConfigName")
    with LOCK:
        if name in backend.endpoint_configs:
            raise in_use(
                "endpoint configuration", backend.endpoint_configs[name].endpoint_config_arn
            )
        return _create_endpoint_config(self)


def create_endpoint(self: SageMakerResponse) -> ActionResult:
    """Fills: moto's endpoint is InService at once (and a reused name overwrites it); here it
    is Creating until its clock says InService or Failed."""
    backend, name = self.sagemaker_backend, self._get_param("EndpointName")
    with LOCK:
        if name in backend.endpoints:
            raise in_use("endpoint", backend.endpoints[name].arn)
        settings = clock_settings(self._get_param("Tags"), None)
        check_outcome(settings.get("outcome", "InService"), ("InService", "Failed"))
        result = _create_endpoint(self)
        endpoint = backend.endpoints[name]
        RUNS[endpoint.arn] = EndpointRun(backend, endpoint, settings)
    return result


def update_endpoint(self: SageMakerResponse) -> ActionResult:
    """Fills: moto has no UpdateEndpoint (HTTP 500)."""
    backend = self.sagemaker_backend
    name, config = self._get_param("EndpointName"), self._get_param("EndpointConfigName")
    with LOCK:
        endpoint = backend.endpoints.get(name)
        if endpoint is None:
            arn = FakeEndpoint.arn_formatter(name, backend.account_id, backend.region_name)
            raise ValidationError(f"Could not find endpoint '{arn}'.")
        if config not in backend.endpoint_configs:
            arn = arn_formatter("endpoint-config", config, backend.account_id, backend.region_name)
            raise ValidationError(f"Could not find endpoint configuration '{arn}'.")
        RUNS[endpoint.arn].update(config)
        return ActionResult({"EndpointArn": endpoint.arn})


def delete_endpoint(self: SageMakerResponse) -> ActionResult:
    """Fills: the endpoint's clock goes with it."""
    backend = self.sagemaker_backend
    with LOCK:
        endpoint = backend.endpoints.get(self._get_param("EndpointName"))
        result = _delete_endpoint(self)
        if endpoint is not None:
            RUNS.pop(endpoint.arn, None)
    return result


# --- CloudWatch Logs patch ----------------------------------------------------------------


def filter_log_events(self: LogsResponse) -> str:
    """Fills: moto ignores logStreamNamePrefix and only merges streams in time order when
    asked to with `interleaved` (which AWS ignores, always interleaving)."""
    group_name = self._get_param("logGroupName")
    names = self._get_param("logStreamNames") or []
    prefix = self._get_param("logStreamNamePrefix")
    if names and prefix:
        raise InvalidParameterException(
            "logStreamNames and logStreamNamePrefix cannot both be specified."
        )
    group = self.logs_backend.groups.get(group_name)
    if group is None:
        raise ResourceNotFoundException()
    if prefix:
        names = [n for n in group.streams if n.startswith(prefix)]
        if not names:
            return json.dumps({"events": [], "searchedLogStreams": []})
    events, token, searched = self.logs_backend.filter_log_events(
        group_name,
        names,
        self._get_param("startTime"),
        self._get_param("endTime"),
        self._get_param("limit"),
        self._get_param("nextToken"),
        self._get_param("filterPattern"),
        True,
    )
    return json.dumps({"events": events, "nextToken": token, "searchedLogStreams": searched})


# --- sagemaker-runtime patch --------------------------------------------------------------


def runtime_error(status: int, code: str, message: str, **extra: Any) -> tuple[int, dict, str]:
    return (
        status,
        {"status": status, "x-amzn-ErrorType": code, "Content-Type": "application/json"},
        json.dumps({"__type": code, "message": message, **extra}),
    )


def predict(endpoint_name: str, body: Any) -> dict:
    """The extension's fixed answer (no model): floor(sum of each row) mod 3."""
    request = json.loads(body)
    first = request["inputs"][0]
    rows = int(first["shape"][0])
    data = [float(x) for x in first["data"]]
    width = math.prod(int(d) for d in first["shape"][1:]) if len(first["shape"]) > 1 else 1
    if rows * width != len(data):
        raise ValueError(f"shape {first['shape']} does not match {len(data)} values")
    out = [math.floor(sum(data[r * width : (r + 1) * width])) % 3 for r in range(rows)]
    answer = {
        "model_name": endpoint_name,
        "outputs": [{"name": "predict", "shape": [rows], "datatype": "INT64", "data": out}],
    }
    if "id" in request:
        answer["id"] = request["id"]
    return answer


def invoke_endpoint(self: SageMakerRuntimeResponse):
    """Fills: moto answers any endpoint name, existing or not, with a fixed or queued body;
    here the endpoint must exist and serve, and the answer is OIP V2 computed from the input."""
    name = unquote(self.path.split("/")[2])
    backend = sagemaker_backends[self.current_account][self.region]
    endpoint = backend.endpoints.get(name)
    if endpoint is None or endpoint.endpoint_status not in ("InService", "Updating"):
        return runtime_error(
            400, "ValidationError", f"Endpoint {name} of account {self.current_account} not found."
        )
    variants = endpoint.production_variants or []
    target = self.headers.get("X-Amzn-SageMaker-Target-Variant")
    if target is not None and target not in [v["VariantName"] for v in variants]:
        return runtime_error(
            400, "ValidationError", f"Target variant {target} not found for endpoint {name}."
        )
    variant = target or max(variants, key=lambda v: v["CurrentWeight"])["VariantName"]
    try:
        answer = predict(name, self.body)
    except (ValueError, KeyError, IndexError, TypeError) as e:
        message = f"not an Open Inference Protocol V2 request: {e}"
        return runtime_error(
            424,
            "ModelError",
            message,
            OriginalStatusCode=400,
            OriginalMessage=json.dumps({"error": message}),
        )
    headers = {"Content-Type": "application/json", "x-Amzn-Invoked-Production-Variant": variant}
    return 200, headers, json.dumps(answer)


def install() -> None:
    for name, fn in {
        "create_training_job": create_training_job,
        "stop_training_job": stop_training_job,
        "create_model": create_model,
        "create_endpoint_config": create_endpoint_config,
        "create_endpoint": create_endpoint,
        "update_endpoint": update_endpoint,
        "delete_endpoint": delete_endpoint,
    }.items():
        setattr(SageMakerResponse, name, fn)
    LogsResponse.filter_log_events = filter_log_events
    SageMakerRuntimeResponse.invoke_endpoint = invoke_endpoint


# --- the server -------------------------------------------------------------------------


def signing(environ: dict) -> tuple[str, str]:
    """(access key id, service) from a SigV4 Authorization header."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    _, _, cred = auth.partition("Credential=")
    parts = cred.split(",")[0].split("/")
    return (parts[0], parts[3]) if len(parts) >= 5 else ("", "")


class Extension:
    """WSGI in front of moto: health, the refused key, and time moving before each request."""

    def __init__(self, moto_app):
        self.moto = moto_app

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == "/mlgw-test/health":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"mlgw moto sagemaker extension\n"]
        key, service = signing(environ)
        if key == REFUSED_ACCESS_KEY_ID:
            return self.refuse(service, start_response)
        advance_all()
        # SageMaker and CloudWatch requests are small: serialising them keeps reads consistent
        # with the clocks. S3 requests (bodies of any size) are not held up.
        hold = LOCK if service in ("sagemaker", "logs") else contextlib.nullcontext()
        with hold:
            return self.moto(environ, start_response)

    @staticmethod
    def refuse(service: str, start_response):
        if service == "s3":
            body = (
                "<?xml version='1.0' encoding='UTF-8'?><Error><Code>InvalidAccessKeyId</Code>"
                "<Message>The AWS Access Key Id you provided does not exist in our records."
                "</Message></Error>"
            )
            start_response("403 Forbidden", [("Content-Type", "application/xml")])
        else:
            body = json.dumps(
                {
                    "__type": "UnrecognizedClientException",
                    "message": "The security token included in the request is invalid.",
                }
            )
            start_response(
                "400 Bad Request",
                [
                    ("Content-Type", "application/x-amz-json-1.1"),
                    ("x-amzn-ErrorType", "UnrecognizedClientException"),
                ],
            )
        return [body.encode()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--endpoint-file")
    args = ap.parse_args()
    install()
    app = Extension(DomainDispatcherApplication(create_backend_app))
    server = make_server(
        args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler
    )
    endpoint = f"http://{args.host}:{server.server_port}"
    os.environ["MOTO_PORT"] = str(server.server_port)
    if args.endpoint_file:
        tmp = f"{args.endpoint_file}.tmp"
        with open(tmp, "w") as f:
            f.write(endpoint + "\n")
        os.replace(tmp, args.endpoint_file)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"serving on {endpoint}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
