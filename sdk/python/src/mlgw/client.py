"""The notebook-facing client: one object for every target."""

from __future__ import annotations

import datetime as _dt
import html
import os
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from ._proto.mlgw.v1 import (
    common_pb2,
    serving_pb2,
    serving_pb2_grpc,
    targets_pb2,
    targets_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from .errors import (
    EndpointFailed,
    JobCancelled,
    JobFailed,
    MlgwError,
    Timeout,
    from_rpc_error,
)
from .tensors import from_tensor, to_tensor

T = TypeVar("T")

DEFAULT_ADDRESS = "localhost:50051"

_JOB_STATES = {
    training_pb2.JOB_STATE_PENDING: "pending",
    training_pb2.JOB_STATE_RUNNING: "running",
    training_pb2.JOB_STATE_SUCCEEDED: "succeeded",
    training_pb2.JOB_STATE_FAILED: "failed",
    training_pb2.JOB_STATE_CANCELLED: "cancelled",
}
_JOB_STATE_VALUES = {v: k for k, v in _JOB_STATES.items()}
_TERMINAL = {"succeeded", "failed", "cancelled"}

_ENDPOINT_STATES = {
    serving_pb2.ENDPOINT_STATE_CREATING: "creating",
    serving_pb2.ENDPOINT_STATE_READY: "ready",
    serving_pb2.ENDPOINT_STATE_UPDATING: "updating",
    serving_pb2.ENDPOINT_STATE_FAILED: "failed",
    serving_pb2.ENDPOINT_STATE_DELETED: "deleted",
}


def _time(ts: Any) -> _dt.datetime | None:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return ts.ToDatetime(tzinfo=_dt.timezone.utc)


def _seconds(value: float | _dt.timedelta | None) -> int:
    if value is None:
        return 0
    if isinstance(value, _dt.timedelta):
        value = value.total_seconds()
    return max(1, int(round(value)))


def _html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(str(r.get(c, '') or ''))}</td>" for c in columns)
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _address(address: str | None) -> str:
    address = address or os.environ.get("MLGW_SERVER") or DEFAULT_ADDRESS
    for prefix in ("http://", "https://"):
        if address.startswith(prefix):
            return address[len(prefix) :].rstrip("/")
    return address


class Client:
    """A connection to an mlgw gateway.

    ``address`` defaults to ``$MLGW_SERVER``, then ``localhost:50051``. ``tls=True`` (or an
    ``https://`` address) uses a secure channel, optionally with ``root_certificates``;
    ``token`` is sent as a bearer token on every call. ``timeout`` bounds unary calls.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        tls: bool | None = None,
        root_certificates: bytes | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        raw = address or os.environ.get("MLGW_SERVER") or DEFAULT_ADDRESS
        self.address = _address(address)
        secure = tls if tls is not None else raw.startswith("https://")
        if secure:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.secure_channel(self.address, creds)
        else:
            self._channel = grpc.insecure_channel(self.address)
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self.timeout = timeout
        self._training = training_pb2_grpc.TrainingServiceStub(self._channel)
        self._serving = serving_pb2_grpc.ServingServiceStub(self._channel)
        self._targets = targets_pb2_grpc.TargetServiceStub(self._channel)

    # -- plumbing -------------------------------------------------------------------------

    def _call(self, method: Callable[..., T], request: Any, timeout: float | None = None) -> T:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def _stream(
        self, method: Callable[..., Any], request: Any, timeout: float | None
    ) -> Iterator[Any]:
        try:
            yield from method(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"mlgw.Client({self.address!r})"

    # -- training -------------------------------------------------------------------------

    def train(
        self,
        command: str | Sequence[str],
        *,
        target: str | None = None,
        name: str | None = None,
        image: str | None = None,
        env: Mapping[str, str] | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        inputs: Mapping[str, str] | None = None,
        output: str | None = None,
        gpus: int = 0,
        cpu: str | None = None,
        memory: str | None = None,
        nodes: int = 1,
        max_runtime: float | _dt.timedelta | None = None,
        framework: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submits a training job. ``command`` is a list (or a shell-style string) run by the
        target; hyperparameter values are sent as strings."""
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        spec = training_pb2.TrainingJobSpec(
            name=name or "",
            image=image or "",
            command=argv,
            env=dict(env or {}),
            hyperparameters={k: str(v) for k, v in (hyperparameters or {}).items()},
            inputs=[training_pb2.InputChannel(name=k, uri=v) for k, v in (inputs or {}).items()],
            output_uri=output or "",
            resources=common_pb2.Resources(
                cpu=cpu or "", memory=memory or "", gpus=gpus, nodes=nodes
            ),
            max_runtime_seconds=_seconds(max_runtime),
            framework=framework or "",
        )
        req = training_pb2.SubmitJobRequest(
            target=target or "", spec=spec, idempotency_key=idempotency_key or ""
        )
        return Job(self, self._call(self._training.Submit, req))

    def get_job(self, id: str) -> Job:
        return Job(self, self._call(self._training.Get, training_pb2.GetJobRequest(id=id)))

    def jobs(self, target: str | None = None, state: str | None = None) -> JobList:
        """Every job (newest first), optionally only on one target or in one state."""
        if state is not None and state not in _JOB_STATE_VALUES:
            raise ValueError(f"state must be one of {sorted(_JOB_STATE_VALUES)}")
        out = JobList()
        token = ""
        while True:
            resp = self._call(
                self._training.List,
                training_pb2.ListJobsRequest(
                    target=target or "",
                    state=_JOB_STATE_VALUES.get(state or "", 0),
                    page_size=1000,
                    page_token=token,
                ),
            )
            out.extend(Job(self, j) for j in resp.jobs)
            token = resp.next_page_token
            if not token:
                return out

    # -- serving --------------------------------------------------------------------------

    def deploy(
        self,
        model_uri: str,
        *,
        model_format: str,
        name: str,
        target: str | None = None,
        min_replicas: int = 1,
        max_replicas: int = 1,
        gpus: int = 0,
        cpu: str | None = None,
        memory: str | None = None,
        runtime: str | None = None,
        image: str | None = None,
        canary_percent: int | None = None,
        idempotency_key: str | None = None,
    ) -> Endpoint:
        spec = serving_pb2.EndpointSpec(
            name=name,
            model_uri=model_uri,
            model_format=model_format,
            runtime=runtime or "",
            image=image or "",
            resources=common_pb2.Resources(cpu=cpu or "", memory=memory or "", gpus=gpus),
            min_replicas=min_replicas,
            max_replicas=max_replicas,
        )
        if canary_percent is not None:
            spec.canary_percent = canary_percent
        req = serving_pb2.DeployRequest(
            target=target or "", spec=spec, idempotency_key=idempotency_key or ""
        )
        return Endpoint(self, self._call(self._serving.Deploy, req))

    def get_endpoint(self, name_or_id: str) -> Endpoint:
        req = serving_pb2.GetEndpointRequest(id=name_or_id)
        return Endpoint(self, self._call(self._serving.Get, req))

    def endpoints(self, target: str | None = None, include_deleted: bool = False) -> EndpointList:
        out = EndpointList()
        token = ""
        while True:
            resp = self._call(
                self._serving.List,
                serving_pb2.ListEndpointsRequest(
                    target=target or "",
                    include_deleted=include_deleted,
                    page_size=1000,
                    page_token=token,
                ),
            )
            out.extend(Endpoint(self, e) for e in resp.endpoints)
            token = resp.next_page_token
            if not token:
                return out

    # -- targets --------------------------------------------------------------------------

    def targets(self) -> TargetList:
        resp = self._call(self._targets.List, targets_pb2.ListTargetsRequest())
        return TargetList(Target.from_pb(t) for t in resp.targets)


class Job:
    """A training job. Attributes reflect the last answer from the gateway; ``refresh()``
    asks again."""

    def __init__(self, client: Client, pb: training_pb2.Job) -> None:
        self._client = client
        self._pb = pb

    @property
    def id(self) -> str:
        return self._pb.id

    @property
    def name(self) -> str:
        return self._pb.spec.name

    @property
    def target(self) -> str:
        return self._pb.target

    @property
    def state(self) -> str:
        return _JOB_STATES.get(self._pb.state, "unknown")

    @property
    def message(self) -> str:
        return self._pb.message

    @property
    def output_uri(self) -> str:
        return self._pb.output_uri

    @property
    def backend_ref(self) -> str:
        return self._pb.backend_ref

    @property
    def created_at(self) -> _dt.datetime | None:
        return _time(self._pb.created_at)

    @property
    def finished_at(self) -> _dt.datetime | None:
        return _time(self._pb.finished_at) if self._pb.HasField("finished_at") else None

    @property
    def done(self) -> bool:
        return self.state in _TERMINAL

    def refresh(self) -> Job:
        self._pb = self._client._call(
            self._client._training.Get, training_pb2.GetJobRequest(id=self.id)
        )
        return self

    def wait(self, timeout: float | None = None, progress: bool = True) -> Job:
        """Blocks until the job ends, following the gateway's Watch stream. Returns the job
        if it succeeded; raises ``JobFailed`` (``JobCancelled``) with the backend's reason
        otherwise, and ``Timeout`` after ``timeout`` seconds."""
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=None, desc=f"{self.name or 'job'} {self.id}", unit=" events")
        try:
            events = self._client._stream(
                self._client._training.Watch, training_pb2.WatchJobRequest(id=self.id), timeout
            )
            for ev in events:
                if ev.HasField("job"):
                    self._pb = ev.job
                if bar is not None:
                    bar.set_postfix_str(self.state)
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        if not self.done:
            self.refresh()
        if not self.done:
            raise Timeout(f"job {self.id} still {self.state}", None)
        if self.state == "failed":
            raise JobFailed(self, self.message)
        if self.state == "cancelled":
            raise JobCancelled(self, self.message or "cancelled")
        return self

    def logs(self, follow: bool = False, timeout: float | None = None) -> Iterator[str]:
        """Yields log lines; with ``follow``, keeps yielding until the job ends."""
        req = training_pb2.JobLogsRequest(id=self.id, follow=follow)
        for line in self._client._stream(self._client._training.Logs, req, timeout):
            yield line.text

    def cancel(self) -> Job:
        self._pb = self._client._call(
            self._client._training.Cancel, training_pb2.CancelJobRequest(id=self.id)
        )
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "target": self.target,
            "state": self.state,
            "message": self.message,
            "output_uri": self.output_uri,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
        }

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, target={self.target!r}, state={self.state!r})"

    def _repr_html_(self) -> str:
        return _html_table([self.to_dict()], list(self.to_dict()))


class Endpoint:
    """A model endpoint; ``predict`` sends tensors through the gateway's data plane."""

    def __init__(self, client: Client, pb: serving_pb2.Endpoint) -> None:
        self._client = client
        self._pb = pb

    @property
    def id(self) -> str:
        return self._pb.id

    @property
    def name(self) -> str:
        return self._pb.spec.name

    @property
    def target(self) -> str:
        return self._pb.target

    @property
    def state(self) -> str:
        return _ENDPOINT_STATES.get(self._pb.state, "unknown")

    @property
    def message(self) -> str:
        return self._pb.message

    @property
    def model_uri(self) -> str:
        return self._pb.spec.model_uri

    @property
    def url(self) -> str:
        return self._pb.url

    def refresh(self) -> Endpoint:
        self._pb = self._client._call(
            self._client._serving.Get, serving_pb2.GetEndpointRequest(id=self.id)
        )
        return self

    def wait_ready(self, timeout: float | None = None, poll: float = 0.25) -> Endpoint:
        """Blocks until the endpoint serves (the model server itself says ready). Raises
        ``EndpointFailed`` if it fails and ``Timeout`` after ``timeout`` seconds."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.refresh()
            if self.state == "ready":
                return self
            if self.state in ("failed", "deleted"):
                raise EndpointFailed(f"endpoint {self.name} {self.state}: {self.message}")
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"endpoint {self.name} still {self.state}: {self.message}")
            time.sleep(poll)

    def predict(self, x: Any, *, input_name: str = "input-0") -> Any:
        """Sends ``x`` (numpy array, pandas DataFrame or nested lists) as an OIP V2 tensor.
        Returns the output as a numpy array, or a dict of arrays when there are several."""
        req = serving_pb2.PredictRequest(endpoint=self.id, inputs=[to_tensor(x, input_name)])
        resp = self._client._call(self._client._serving.Predict, req)
        outputs = {t.name: from_tensor(t) for t in resp.outputs}
        if len(outputs) == 1:
            return next(iter(outputs.values()))
        return outputs

    def update(
        self,
        model_uri: str | None = None,
        *,
        canary_percent: int | None = None,
        model_format: str | None = None,
    ) -> Endpoint:
        spec = serving_pb2.EndpointSpec(model_uri=model_uri or "", model_format=model_format or "")
        if canary_percent is not None:
            spec.canary_percent = canary_percent
        self._pb = self._client._call(
            self._client._serving.Update, serving_pb2.UpdateEndpointRequest(id=self.id, spec=spec)
        )
        return self

    def delete(self) -> Endpoint:
        self._pb = self._client._call(
            self._client._serving.Delete, serving_pb2.DeleteEndpointRequest(id=self.id)
        )
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "target": self.target,
            "state": self.state,
            "model_uri": self.model_uri,
            "url": self.url,
            "message": self.message,
        }

    def __repr__(self) -> str:
        return f"Endpoint(name={self.name!r}, target={self.target!r}, state={self.state!r})"

    def _repr_html_(self) -> str:
        return _html_table([self.to_dict()], list(self.to_dict()))


@dataclass(frozen=True)
class Target:
    name: str
    default: bool
    plugin: str
    version: str
    features: tuple[str, ...] = field(default_factory=tuple)
    grants: tuple[str, ...] = field(default_factory=tuple)
    healthy: bool = True
    health_message: str = ""

    @classmethod
    def from_pb(cls, t: targets_pb2.Target) -> Target:
        features = tuple(
            targets_pb2.Feature.Name(f).removeprefix("FEATURE_").lower().replace("_", "-")
            for f in t.features
        )
        return cls(
            name=t.name,
            default=t.is_default,
            plugin=t.plugin,
            version=t.plugin_version,
            features=features,
            grants=tuple(t.grants),
            healthy=t.health == targets_pb2.TARGET_HEALTH_HEALTHY,
            health_message=t.health_message,
        )

    def supports(self, feature: str) -> bool:
        return feature in self.features

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "default": self.default,
            "plugin": self.plugin,
            "version": self.version,
            "features": ", ".join(self.features),
            "grants": ", ".join(self.grants),
            "healthy": self.healthy,
        }


class _Listing(list):  # type: ignore[type-arg]
    def to_pandas(self) -> Any:
        import pandas as pd

        return pd.DataFrame([item.to_dict() for item in self])

    def _repr_html_(self) -> str:
        rows = [item.to_dict() for item in self]
        return _html_table(rows, list(rows[0]) if rows else ["(none)"])


class JobList(_Listing):
    """Jobs, newest first; ``to_pandas()`` for a DataFrame."""


class EndpointList(_Listing):
    """Endpoints; ``to_pandas()`` for a DataFrame."""


class TargetList(_Listing):
    """Targets and what each supports."""


__all__ = [
    "Client",
    "Endpoint",
    "EndpointList",
    "Job",
    "JobList",
    "MlgwError",
    "Target",
    "TargetList",
]
