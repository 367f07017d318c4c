"""Model endpoints and predictions through them."""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import _display
from ._common import timestamp, to_pandas
from ._proto.mlgw.v1 import common_pb2, serving_pb2
from .artifacts import Artifact
from .errors import EndpointFailed, InvalidSpec, Timeout
from .job import Job
from .tensors import decode_outputs, encode_inputs

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Endpoint", "EndpointList", "EndpointState"]

EndpointState = Literal["creating", "ready", "updating", "degraded", "failed", "deleted", "unknown"]

STATES: dict[int, EndpointState] = {
    serving_pb2.ENDPOINT_STATE_CREATING: "creating",
    serving_pb2.ENDPOINT_STATE_READY: "ready",
    serving_pb2.ENDPOINT_STATE_UPDATING: "updating",
    # Was ready; its model server failed readiness probes since. Still takes predictions.
    serving_pb2.ENDPOINT_STATE_DEGRADED: "degraded",
    serving_pb2.ENDPOINT_STATE_FAILED: "failed",
    serving_pb2.ENDPOINT_STATE_DELETED: "deleted",
}
STATE_VALUES: dict[str, int] = {v: k for k, v in STATES.items()}


def non_negative(field: str, value: int | None) -> int:
    """Counts are unsigned on the wire; a negative one is refused here, typed like the
    server's refusals."""
    if value is None:
        return 0
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise InvalidSpec(f"{field}: must be an integer, not {value!r}", field)
    if value < 0:
        raise InvalidSpec(f"{field}: must not be negative", field)
    return int(value)


def model_ref(model: str | Job | Artifact) -> str:
    """What an endpoint spec's ``model_uri`` says for a model: a job's id (the gateway deploys
    that job's output), an artifact's URI, or the string given (a URI or a job id)."""
    if isinstance(model, Job):
        return model.id
    if isinstance(model, Artifact):
        return model.uri
    return model


def percent(value: int) -> int:
    v = non_negative("spec.canary_percent", value)
    if v > 100:
        raise InvalidSpec("spec.canary_percent: must be between 0 and 100", "spec.canary_percent")
    return v


def predict(
    client: Client,
    endpoint: str,
    x: Any,
    *,
    input_name: str = "input-0",
    outputs: Sequence[str] | None = None,
    parameters: Mapping[str, str] | None = None,
    request_id: str | None = None,
    timeout: float | None = None,
) -> Any:
    inputs, params = encode_inputs(x, input_name)
    params.update({k: str(v) for k, v in (parameters or {}).items()})
    req = serving_pb2.PredictRequest(
        endpoint=endpoint,
        inputs=inputs,
        outputs=list(outputs or ()),
        request_id=request_id or "",
        parameters=params,
    )
    resp = client._call(client._serving.Predict, req, timeout)
    decoded = decode_outputs(resp.outputs)
    if len(decoded) == 1:
        return next(iter(decoded.values()))
    return decoded


class Endpoint:
    """A model endpoint. Attributes reflect the gateway's last answer; :meth:`refresh` asks
    again."""

    def __init__(self, client: Client, message: serving_pb2.Endpoint) -> None:
        self._client = client
        self._pb = message

    # -- attributes -------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._pb.id

    @property
    def name(self) -> str:
        """Unique among live endpoints; also the model's name on the model server."""
        return self._pb.spec.name

    @property
    def target(self) -> str:
        return self._pb.target

    @property
    def state(self) -> EndpointState:
        """``creating``, ``ready``, ``updating``, ``degraded`` (serving, but failing readiness
        probes since it was ready), ``failed`` or ``deleted``."""
        return STATES.get(self._pb.state, "unknown")

    @property
    def message(self) -> str:
        return self._pb.message

    @property
    def backend_state(self) -> str:
        return self._pb.backend_state

    @property
    def backend_ref(self) -> str:
        return self._pb.backend_ref

    @property
    def model_uri(self) -> str:
        return self._pb.spec.model_uri

    @property
    def model_format(self) -> str:
        return self._pb.spec.model_format

    @property
    def url(self) -> str:
        """Where the model server is, once known (for operators; use :meth:`predict`)."""
        return self._pb.url

    @property
    def canary_percent(self) -> int | None:
        spec = self._pb.spec
        return spec.canary_percent if spec.HasField("canary_percent") else None

    @property
    def created_at(self) -> _dt.datetime | None:
        return timestamp(self._pb, "created_at")

    @property
    def updated_at(self) -> _dt.datetime | None:
        return timestamp(self._pb, "updated_at")

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def proto(self) -> serving_pb2.Endpoint:
        """The underlying ``mlgw.v1.Endpoint`` message."""
        return self._pb

    # -- actions ----------------------------------------------------------------------------

    def refresh(self) -> Endpoint:
        """Fetches the endpoint's current state; returns ``self``."""
        c = self._client
        self._pb = c._call(c._serving.Get, serving_pb2.GetEndpointRequest(id=self.id))
        return self

    def wait_ready(self, timeout: float | None = None, *, poll: float = 0.5) -> Endpoint:
        """Blocks until the endpoint serves (the model server itself answers ready); returns
        ``self``. Raises :class:`~mlgw.EndpointFailed` with the backend's reason if it fails or
        is deleted, and :class:`~mlgw.Timeout` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.refresh()
            if self.state == "ready":
                return self
            if self.state in ("failed", "deleted"):
                raise EndpointFailed(self, self.message or self.backend_state)
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(
                    f"endpoint {self.name} is still {self.state} after {timeout} s"
                    + (f": {self.message}" if self.message else "")
                )
            time.sleep(
                poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
            )

    def predict(
        self,
        x: Any,
        *,
        input_name: str = "input-0",
        outputs: Sequence[str] | None = None,
        parameters: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Sends ``x`` as Open Inference Protocol V2 tensors and returns the prediction.

        ``x`` may be a numpy array, a pandas DataFrame or Series, nested lists, or a mapping of
        input names to any of those. The answer is a numpy array, or a dict of arrays by output
        name when the model returns several outputs. ``outputs`` asks for specific outputs;
        ``parameters`` are OIP request parameters (e.g. ``{"content_type": "np"}``)."""
        return predict(
            self._client,
            self.id,
            x,
            input_name=input_name,
            outputs=outputs,
            parameters=parameters,
            request_id=request_id,
            timeout=timeout,
        )

    def update(
        self,
        model_uri: str | Job | Artifact | None = None,
        canary_percent: int | None = None,
        *,
        model_format: str | None = None,
        runtime: str | None = None,
        image: str | None = None,
        min_replicas: int | None = None,
        max_replicas: int | None = None,
        gpus: int | None = None,
        cpu: str | None = None,
        memory: str | None = None,
    ) -> Endpoint:
        """Rolls the endpoint to a new model, scale or canary split; it keeps serving while
        the rollout runs (state ``updating``; :meth:`wait_ready` waits for it). ``model_uri``
        takes what :meth:`Client.deploy` takes: a URI, a finished :class:`Job` or its id, or an
        :class:`Artifact`.

        Arguments left ``None`` keep their current value, ``canary_percent`` included (no
        canary stays none: a full rollout). ``canary_percent`` sends that share of traffic to
        the new revision; ``100`` promotes it to all traffic, ending the canary."""
        spec = serving_pb2.EndpointSpec(
            model_uri=model_ref(model_uri) if model_uri is not None else "",
            model_format=model_format or "",
            runtime=runtime or "",
            image=image or "",
            min_replicas=non_negative("spec.min_replicas", min_replicas),
            max_replicas=non_negative("spec.max_replicas", max_replicas),
        )
        if any(v is not None for v in (gpus, cpu, memory)):
            # The gateway replaces resources as a whole: start from the current ones.
            res = common_pb2.Resources()
            res.CopyFrom(self._pb.spec.resources)
            if gpus is not None:
                res.gpus = non_negative("spec.resources.gpus", gpus)
            if cpu is not None:
                res.cpu = cpu
            if memory is not None:
                res.memory = memory
            spec.resources.CopyFrom(res)
        if canary_percent is not None:
            spec.canary_percent = percent(canary_percent)
        c = self._client
        self._pb = c._call(
            c._serving.Update, serving_pb2.UpdateEndpointRequest(id=self.id, spec=spec)
        )
        return self

    def delete(self) -> Endpoint:
        """Deletes the endpoint (stops its model server); returns ``self``, now ``deleted``."""
        c = self._client
        self._pb = c._call(c._serving.Delete, serving_pb2.DeleteEndpointRequest(id=self.id))
        return self

    # -- display ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "target": self.target,
            "state": self.state,
            "message": self.message,
            "model_uri": self.model_uri,
            "model_format": self.model_format,
            "canary_percent": self.canary_percent,
            "url": self.url,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    def __repr__(self) -> str:
        return (
            f"Endpoint(id={self.id!r}, name={self.name!r}, target={self.target!r}, "
            f"state={self.state!r})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Endpoint) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("endpoint", self.id))

    def _repr_html_(self) -> str:
        return _display.record(f"Endpoint {self.name}", self.to_dict())


class EndpointList(list[Endpoint]):
    """Endpoints. ``to_pandas()`` gives a DataFrame; Jupyter shows a table."""

    COLUMNS = ("id", "name", "target", "state", "model_format", "model_uri", "message")

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` with one row per endpoint."""
        return to_pandas((e.to_dict() for e in self), _ENDPOINT_COLS)

    def _repr_html_(self) -> str:
        rows = [e.to_dict() for e in self]
        return _display.table(rows, self.COLUMNS, f"{len(self)} endpoints")


_ENDPOINT_COLS = (
    "id",
    "name",
    "target",
    "state",
    "message",
    "model_uri",
    "model_format",
    "canary_percent",
    "url",
    "created_at",
    "updated_at",
)
