"""Typed errors. Every gRPC status from the gateway becomes one of these, carrying the server's
message and status code: callers never see a bare ``grpc.RpcError``.

===========================  ==========================
gRPC status                  exception
===========================  ==========================
INVALID_ARGUMENT             :class:`InvalidSpec` (``.field`` is the offending field's path)
NOT_FOUND                    :class:`NotFound`
ALREADY_EXISTS               :class:`AlreadyExists`
PERMISSION_DENIED            :class:`PermissionDenied`
UNAUTHENTICATED              :class:`Unauthenticated` (a :class:`PermissionDenied`)
FAILED_PRECONDITION          :class:`FailedPrecondition`
RESOURCE_EXHAUSTED           :class:`ResourceExhausted`
UNAVAILABLE                  :class:`Unavailable`
UNIMPLEMENTED                :class:`Unsupported`
DEADLINE_EXCEEDED            :class:`Timeout` (also a builtin :class:`TimeoutError`)
anything else                :class:`MlgwError`
===========================  ==========================
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from .endpoint import Endpoint
    from .job import Job

__all__ = [
    "AlreadyExists",
    "EndpointFailed",
    "FailedPrecondition",
    "InvalidSpec",
    "JobCancelled",
    "JobFailed",
    "MlgwError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Timeout",
    "Unauthenticated",
    "Unavailable",
    "Unsupported",
]

#: The trailing-metadata key in which the gateway names the offending field.
FIELD_TRAILER = "mlgw-field"


class MlgwError(Exception):
    """Base class of every error this package raises.

    ``message`` is the server's message (or the client's, for errors raised locally) and
    ``code`` the gRPC status code, or ``None`` when the error did not come from a status.
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __repr__(self) -> str:
        code = self.code.name if self.code is not None else None
        return f"{type(self).__name__}({self.message!r}, code={code})"


class InvalidSpec(MlgwError):
    """The request was refused as invalid. ``field`` is the path of the offending field, e.g.
    ``spec.command`` or ``spec.env.1X`` (empty when the server named none)."""

    def __init__(self, message: str, field: str = "", code: grpc.StatusCode | None = None) -> None:
        super().__init__(message, code)
        self.field = field


class NotFound(MlgwError):
    """No such job, endpoint or target."""


class AlreadyExists(MlgwError):
    """Something with that identity already exists (e.g. a live endpoint with that name)."""


class PermissionDenied(MlgwError):
    """The caller, or the target, is not allowed to do this."""


class Unauthenticated(PermissionDenied):
    """The gateway wants credentials (a bearer token) that were missing or not accepted."""


class FailedPrecondition(MlgwError):
    """The object is not in a state that allows this (e.g. predicting on a deleted endpoint)."""


class ResourceExhausted(MlgwError):
    """A limit was hit (a quota, a plugin's memory cap, a message size)."""


class Unavailable(MlgwError):
    """The gateway or the backend cannot be reached right now; retrying may help."""


class Unsupported(MlgwError):
    """The target (or the gateway) does not support this, e.g. canary rollouts on ``local``."""


class Timeout(MlgwError, TimeoutError):
    """A deadline passed: the client's own ``timeout`` or one inside the gateway.

    Also a builtin :class:`TimeoutError`, so code that handles timeouts generically (``except
    TimeoutError``, as for sockets and futures) handles the gateway's too."""


class JobFailed(MlgwError):
    """The job ended without succeeding. ``reason`` is the backend's word on why and ``job`` the
    job as it ended."""

    def __init__(self, job: Job, reason: str) -> None:
        super().__init__(
            f"job {job.id} {job.state}: {reason}" if reason else f"job {job.id} {job.state}"
        )
        self.job = job
        self.reason = reason


class JobCancelled(JobFailed):
    """The job was cancelled before it finished."""


class EndpointFailed(MlgwError):
    """The endpoint could not become ready (or was deleted while waiting). ``reason`` is the
    backend's word on why and ``endpoint`` the endpoint as it was last seen."""

    def __init__(self, endpoint: Endpoint, reason: str) -> None:
        text = f"endpoint {endpoint.name} {endpoint.state}"
        super().__init__(f"{text}: {reason}" if reason else text)
        self.endpoint = endpoint
        self.reason = reason


_BY_CODE: dict[grpc.StatusCode, type[MlgwError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNIMPLEMENTED: Unsupported,
    grpc.StatusCode.DEADLINE_EXCEEDED: Timeout,
}

# "spec.command", "spec.env.1X", "inputs.0.name", "spec.resources.gpus": dotted segments
# without spaces or colons, the first one an identifier.
_FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[^\s.:]+)*")


def field_of(message: str, trailers: Iterable[tuple[str, Any]] | None = None) -> str:
    """The offending field's path: the ``mlgw-field`` trailer when present, else the part of
    ``"field.path: reason"`` before the colon, else ``""``."""
    for key, value in trailers or ():
        if key == FIELD_TRAILER:
            return value.decode() if isinstance(value, bytes) else str(value)
    head, sep, _ = message.partition(": ")
    return head if sep and _FIELD_PATH.fullmatch(head) else ""


def from_rpc_error(e: grpc.RpcError) -> MlgwError:
    """The typed error for a failed gRPC call."""
    code = e.code() if callable(getattr(e, "code", None)) else None
    details = e.details() if callable(getattr(e, "details", None)) else None
    message = details or (code.name if isinstance(code, grpc.StatusCode) else str(e))
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        trailers = None
        if callable(getattr(e, "trailing_metadata", None)):
            try:
                trailers = e.trailing_metadata()
            except Exception:  # a call that never reached the server has none
                trailers = None
        return InvalidSpec(message, field_of(message, trailers), code)
    cls = _BY_CODE.get(code, MlgwError) if isinstance(code, grpc.StatusCode) else MlgwError
    return cls(message, code)
