"""The client: one object for training and serving on every target."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from ._proto.mlgw.v1 import (
    artifacts_pb2,
    artifacts_pb2_grpc,
    common_pb2,
    serving_pb2,
    serving_pb2_grpc,
    targets_pb2,
    targets_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from ._stream import open_stream, pump
from .artifacts import Artifact, ArtifactList, is_uri, pack
from .artifacts import upload as _upload
from .endpoint import STATE_VALUES as ENDPOINT_STATE_VALUES
from .endpoint import STATES as ENDPOINT_STATES
from .endpoint import Endpoint, EndpointList, model_ref, non_negative, percent
from .endpoint import predict as _predict
from .errors import InvalidSpec, MlgwError, Unavailable, from_rpc_error
from .job import _WATCH_RETRIES, Job, JobChange, JobList
from .job import STATE_VALUES as JOB_STATE_VALUES
from .target import Target, TargetList

__all__ = ["DEFAULT_ADDRESS", "Client", "resolve_address"]

T = TypeVar("T")

#: Where the client connects when neither ``address`` nor ``$MLGW_SERVER`` says otherwise.
DEFAULT_ADDRESS = "localhost:50051"

# Predictions can be large; gRPC's default 4 MiB receive limit is too small for many batches.
_MAX_MESSAGE = 256 * 1024 * 1024


def resolve_address(address: str | None = None) -> tuple[str, bool]:
    """``(host:port, tls)`` for an address: ``address``, else ``$MLGW_SERVER``, else
    ``localhost:50051``. ``https://`` means TLS (default port 443), ``http://`` plaintext
    (default port 80); a bare ``host:port`` is plaintext."""
    raw = (address or os.environ.get("MLGW_SERVER") or DEFAULT_ADDRESS).strip()
    tls = False
    for scheme, port, secure in (("https://", 443, True), ("http://", 80, False)):
        if raw.lower().startswith(scheme):
            raw = raw[len(scheme) :].split("/", 1)[0]
            tls = secure
            host_part = raw.rsplit("]", 1)[-1]  # IPv6 literals: [::1]:50051
            if ":" not in host_part:
                raw = f"{raw}:{port}"
            break
    if not raw:
        raise ValueError(f"not a gateway address: {address!r}")
    return raw, tls


def _hp_value(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(v)


def _seconds(field: str, value: float | _dt.timedelta | None) -> int:
    if value is None:
        return 0
    seconds = value.total_seconds() if isinstance(value, _dt.timedelta) else float(value)
    if seconds <= 0:
        raise InvalidSpec(f"{field}: must be positive", field)
    return max(1, round(seconds))


class Client:
    """A connection to an mlgw gateway.

    :param address: ``host:port`` or an ``http(s)://`` URL; defaults to ``$MLGW_SERVER``, then
        ``localhost:50051``.
    :param tls: use TLS; by default only for ``https://`` addresses.
    :param root_certificates: PEM CA certificates for TLS (default: the system's).
    :param private_key: PEM client key, for mutual TLS (with ``certificate_chain``).
    :param certificate_chain: PEM client certificate chain, for mutual TLS.
    :param token: a bearer token sent with every call (``authorization: Bearer ...``);
        defaults to ``$MLGW_TOKEN``.
    :param timeout: seconds allowed for each unary call (streams are bounded by the
        ``timeout`` of the method that opens them).
    :param options: extra gRPC channel options, as ``(name, value)`` pairs.

    Use it as a context manager, or call :meth:`close`, to release the connection.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        tls: bool | None = None,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.address, url_tls = resolve_address(address)
        self.tls = url_tls if tls is None else tls
        self.timeout = timeout
        channel_options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            *options,
        ]
        if self.tls:
            creds = grpc.ssl_channel_credentials(
                root_certificates=root_certificates,
                private_key=private_key,
                certificate_chain=certificate_chain,
            )
            self._channel = grpc.secure_channel(self.address, creds, options=channel_options)
        else:
            self._channel = grpc.insecure_channel(self.address, options=channel_options)
        token = token if token is not None else os.environ.get("MLGW_TOKEN")
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._closed = False
        self._training = training_pb2_grpc.TrainingServiceStub(self._channel)
        self._serving = serving_pb2_grpc.ServingServiceStub(self._channel)
        self._targets = targets_pb2_grpc.TargetServiceStub(self._channel)
        self._artifacts = artifacts_pb2_grpc.ArtifactServiceStub(self._channel)

    # -- plumbing -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise MlgwError("this mlgw.Client is closed")

    def _call(self, method: Callable[..., T], request: Any, timeout: float | None = None) -> T:
        self._check_open()
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def _open_stream(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        self._check_open()
        return open_stream(method, request, timeout, self._metadata)

    def close(self) -> None:
        """Closes the connection. Jobs and endpoints keep running on the gateway."""
        if not self._closed:
            self._closed = True
            self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"mlgw.Client({self.address!r}{', tls=True' if self.tls else ''})"

    # -- training -----------------------------------------------------------------------------

    def train(
        self,
        command: str | Sequence[str],
        *,
        code: str | os.PathLike[str] | Artifact | None = None,
        target: str | None = None,
        name: str | None = None,
        image: str | None = None,
        env: Mapping[str, Any] | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        inputs: Mapping[str, str | Artifact] | None = None,
        output: str | None = None,
        gpus: int = 0,
        cpu: str | None = None,
        memory: str | None = None,
        nodes: int = 1,
        max_runtime: float | _dt.timedelta | None = None,
        idempotency_key: str | None = None,
        args: Sequence[str] | None = None,
        framework: str | None = None,
        gpu_type: str | None = None,
        instance_type: str | None = None,
    ) -> Job:
        """Submits a training job and returns it (usually ``pending``); :meth:`Job.wait`
        follows it to the end.

        :param command: the program and its arguments, as a list or a shell-style string
            (split with :func:`shlex.split`, not run through a shell). With ``code``, it runs
            in the unpacked code directory, so ``["python", "train.py"]`` finds the script.
        :param code: the job's code, sent with it to whichever target runs it: a local
            directory (packed and uploaded, see :meth:`upload`; the same tree is sent once), an
            :class:`Artifact` of kind ``directory``, or an artifact URI (``file://…``,
            ``s3://…``, ``sha256:…``) used as is.
        :param target: a target name (see :meth:`targets`); ``None`` is the gateway's default.
        :param name: a human name; need not be unique.
        :param image: a container image (container targets; ``local`` ignores it).
        :param env: environment variables for the job.
        :param hyperparameters: passed to the job (on ``local``: ``$MLGW_HP_<KEY>`` and the
            JSON file at ``$MLGW_HYPERPARAMETERS``). Values are sent as strings: ``str`` as is,
            numbers with ``repr``, booleans as ``true``/``false``, anything else as JSON.
        :param inputs: input channels, name to URI or :class:`Artifact` (on ``local``:
            ``$MLGW_INPUT_<NAME>``).
        :param output: where the job's output goes; ``None`` lets the target choose.
        :param gpus: GPUs per node.
        :param cpu: CPU per node, Kubernetes quantity syntax (``"2"``, ``"500m"``).
        :param memory: memory per node, Kubernetes quantity syntax (``"4Gi"``).
        :param nodes: number of nodes (distributed training).
        :param max_runtime: seconds (or a ``timedelta``) after which the target stops the job.
        :param idempotency_key: submitting again with the same key returns the first job.
        :param args: arguments appended to ``command`` (kept separate in the spec).
        :param framework: e.g. ``"pytorch"``; targets may pick an operator or image by it.
        :param gpu_type: e.g. ``"nvidia-a100"``, where the target lets you choose.
        :param instance_type: e.g. ``"ml.m5.xlarge"`` on SageMaker.
        """
        argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
        spec = training_pb2.TrainingJobSpec(
            name=name or "",
            image=image or "",
            command=argv,
            args=[str(a) for a in (args or ())],
            env={str(k): str(v) for k, v in (env or {}).items()},
            hyperparameters={str(k): _hp_value(v) for k, v in (hyperparameters or {}).items()},
            inputs=[
                training_pb2.InputChannel(name=k, uri=v.uri if isinstance(v, Artifact) else v)
                for k, v in (inputs or {}).items()
            ],
            output_uri=output or "",
            resources=common_pb2.Resources(
                cpu=cpu or "",
                memory=memory or "",
                gpus=non_negative("spec.resources.gpus", gpus),
                gpu_type=gpu_type or "",
                instance_type=instance_type or "",
                nodes=non_negative("spec.resources.nodes", nodes),
            ),
            max_runtime_seconds=_seconds("spec.max_runtime_seconds", max_runtime),
            framework=framework or "",
        )
        # Last: a spec refused above must not cost an upload first.
        spec.code_uri = self._code_uri(code)
        req = training_pb2.SubmitJobRequest(
            target=target or "", spec=spec, idempotency_key=idempotency_key or ""
        )
        return Job(self, self._call(self._training.Submit, req))

    def _code_uri(self, code: str | os.PathLike[str] | Artifact | None) -> str:
        field = "spec.code_uri"
        if code is None:
            return ""
        if isinstance(code, Artifact):
            if code.kind == "file":
                raise InvalidSpec(
                    f"{field}: {code.uri} is a file artifact; code must be a directory", field
                )
            return code.uri
        if isinstance(code, str) and is_uri(code):
            return code
        path = Path(code)
        if not path.is_dir():
            what = "not a directory" if path.exists() else "does not exist"
            raise InvalidSpec(f"{field}: {path} {what}; code must be a directory", field)
        with pack(path, field=field) as packed:
            return _upload(self, packed).uri

    def get_job(self, id: str) -> Job:
        """The job with this id; :class:`~mlgw.NotFound` if there is none."""
        return Job(self, self._call(self._training.Get, training_pb2.GetJobRequest(id=id)))

    def jobs(
        self, target: str | None = None, state: str | None = None, *, limit: int | None = None
    ) -> JobList:
        """Jobs, newest first: all of them, or those on one ``target`` and/or in one ``state``
        (``pending``, ``running``, ``succeeded``, ``failed``, ``cancelled``), at most ``limit``."""
        state_value: Any = 0
        if state is not None:
            state_value = JOB_STATE_VALUES.get(state.lower(), -1)
            if state_value < 0:
                raise ValueError(f"state must be one of {', '.join(JOB_STATE_VALUES)}")
        out = JobList()
        token = ""
        while limit is None or len(out) < limit:
            page = 1000 if limit is None else min(1000, limit - len(out))
            resp = self._call(
                self._training.List,
                training_pb2.ListJobsRequest(
                    target=target or "", state=state_value, page_size=page, page_token=token
                ),
            )
            out.extend(Job(self, j) for j in resp.jobs)
            token = resp.next_page_token
            if not token:
                break
        return out if limit is None else JobList(out[:limit])

    def watch_jobs(
        self,
        target: str | None = None,
        states: Sequence[str] | None = None,
        *,
        after: int | None = None,
    ) -> Iterator[JobChange]:
        """Every job change as it happens, oldest first, until the caller stops iterating:
        all jobs, or those on one ``target``, or changes into one of ``states``. With
        ``after`` (a :attr:`JobChange.feed_sequence` seen earlier; 0 for all the gateway
        kept), the changes after it are replayed first. If the gateway restarts, the watch
        reconnects and resumes after the last change it yielded, so none is missed or
        repeated."""
        values = []
        for st in states or ():
            v = JOB_STATE_VALUES.get(st.lower(), -1)
            if v <= 0:
                raise ValueError(f"states must be among {', '.join(JOB_STATE_VALUES)}")
            values.append(v)
        last = after
        failures = 0
        while True:
            req = training_pb2.WatchJobRequest(target=target or "", states=values)
            if last is not None:
                req.after_feed_sequence = last
            call = self._open_stream(self._training.Watch, req, None)
            try:
                for ev in pump(call, None):
                    failures = 0
                    last = ev.feed_sequence
                    yield JobChange(ev.feed_sequence, Job(self, ev.job))
            except Unavailable:
                failures += 1
                if failures > _WATCH_RETRIES:
                    raise
                time.sleep(min(0.5 * 2**failures, 5.0))
            finally:
                call.cancel()

    # -- serving ------------------------------------------------------------------------------

    def deploy(
        self,
        model: str | Job | Artifact,
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
        gpu_type: str | None = None,
        instance_type: str | None = None,
        idempotency_key: str | None = None,
    ) -> Endpoint:
        """Deploys a model as an endpoint and returns it (usually ``creating``);
        :meth:`Endpoint.wait_ready` waits until it serves.

        :param model: the model: a finished training :class:`Job` (or its id), whose output
            the gateway deploys; an :class:`Artifact`; or a URI (``file://…``, ``s3://…``).
        :param model_format: ``"sklearn"``, ``"xgboost"``, ``"onnx"``, ``"pytorch"``, ...
        :param name: unique among live endpoints; also the model's name on the model server.
        :param target: a target name; ``None`` is the gateway's default.
        :param runtime: a model-server runtime; ``None`` lets the target choose by format.
        :param image: a model-server image (container targets).
        :param canary_percent: not usually set at deploy time; see :meth:`Endpoint.update`.
        """
        spec = serving_pb2.EndpointSpec(
            name=name,
            model_uri=model_ref(model),
            model_format=model_format,
            runtime=runtime or "",
            image=image or "",
            resources=common_pb2.Resources(
                cpu=cpu or "",
                memory=memory or "",
                gpus=non_negative("spec.resources.gpus", gpus),
                gpu_type=gpu_type or "",
                instance_type=instance_type or "",
            ),
            min_replicas=non_negative("spec.min_replicas", min_replicas),
            max_replicas=non_negative("spec.max_replicas", max_replicas),
        )
        if canary_percent is not None:
            spec.canary_percent = percent(canary_percent)
        req = serving_pb2.DeployRequest(
            target=target or "", spec=spec, idempotency_key=idempotency_key or ""
        )
        return Endpoint(self, self._call(self._serving.Deploy, req))

    def get_endpoint(self, name_or_id: str) -> Endpoint:
        """The endpoint with this name or id; :class:`~mlgw.NotFound` if there is none."""
        req = serving_pb2.GetEndpointRequest(id=name_or_id)
        return Endpoint(self, self._call(self._serving.Get, req))

    def endpoints(
        self,
        target: str | None = None,
        state: str | None = None,
        *,
        include_deleted: bool = False,
    ) -> EndpointList:
        """Endpoints, optionally on one ``target`` and/or in one ``state``; deleted ones only
        with ``include_deleted``."""
        state_value: Any = 0
        if state is not None:
            state_value = ENDPOINT_STATE_VALUES.get(state.lower(), -1)
            if state_value < 0:
                raise ValueError(f"state must be one of {', '.join(ENDPOINT_STATES.values())}")
        out = EndpointList()
        token = ""
        while True:
            resp = self._call(
                self._serving.List,
                serving_pb2.ListEndpointsRequest(
                    target=target or "",
                    state=state_value,
                    include_deleted=include_deleted or state == "deleted",
                    page_size=1000,
                    page_token=token,
                ),
            )
            out.extend(Endpoint(self, e) for e in resp.endpoints)
            token = resp.next_page_token
            if not token:
                return out

    def predict(
        self,
        endpoint: str,
        x: Any,
        *,
        input_name: str = "input-0",
        outputs: Sequence[str] | None = None,
        parameters: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """A prediction from the endpoint with this name or id, without fetching it first;
        see :meth:`Endpoint.predict`."""
        return _predict(
            self,
            endpoint,
            x,
            input_name=input_name,
            outputs=outputs,
            parameters=parameters,
            request_id=request_id,
            timeout=timeout,
        )

    # -- artifacts ----------------------------------------------------------------------------

    def upload(
        self,
        path: str | os.PathLike[str],
        name: str | None = None,
        *,
        progress: bool = True,
        timeout: float | None = None,
    ) -> Artifact:
        """Stores a file or a directory in the gateway's artifact store and returns it.

        A file goes as it is; a directory as a gzip tar archive of what is in it, honouring
        the ``.gitignore`` and ``.mlgwignore`` files found in it and leaving out ``.git`` and
        ``__pycache__`` (see :mod:`mlgw.artifacts`). A symbolic link is kept only if it
        leads inside the directory: one leading out of it is refused with
        :class:`~mlgw.InvalidSpec` naming it, before anything is sent. Packing is
        deterministic and the store content-addressed, so the same tree is stored and sent
        once; uploading it again returns the same artifact.

        :param name: a label for people; defaults to the path's last component.
        :param progress: a progress bar for uploads of a few MiB or more.
        :param timeout: seconds for the whole transfer; ``None`` for no limit.
        """
        with pack(path, name) as packed:
            return _upload(self, packed, progress=progress, timeout=timeout)

    def artifact(self, uri: str) -> Artifact:
        """The artifact with this URI (as :meth:`upload` returned it, or ``sha256:<hex>``);
        :class:`~mlgw.NotFound` if the store has none."""
        req = artifacts_pb2.StatArtifactRequest(uri=uri)
        return Artifact(self, self._call(self._artifacts.Stat, req))

    def artifacts(self, *, limit: int | None = None) -> ArtifactList:
        """The caller's artifacts, newest first, at most ``limit``."""
        out = ArtifactList()
        token = ""
        while limit is None or len(out) < limit:
            page = 1000 if limit is None else min(1000, limit - len(out))
            resp = self._call(
                self._artifacts.List,
                artifacts_pb2.ListArtifactsRequest(page_size=page, page_token=token),
            )
            out.extend(Artifact(self, a) for a in resp.artifacts)
            token = resp.next_page_token
            if not token:
                break
        return out if limit is None else ArtifactList(out[:limit])

    # -- targets ------------------------------------------------------------------------------

    def targets(self) -> TargetList:
        """Every target the operator configured, with the features each supports."""
        resp = self._call(self._targets.List, targets_pb2.ListTargetsRequest())
        return TargetList(Target.from_proto(t) for t in resp.targets)

    def get_target(self, name: str) -> Target:
        """One target; :class:`~mlgw.NotFound` if there is none by that name."""
        return Target.from_proto(
            self._call(self._targets.Get, targets_pb2.GetTargetRequest(name=name))
        )
