"""Typed errors: every gRPC status from the gateway becomes one of these, carrying the
server's message. Callers never see a bare ``grpc.RpcError``."""

from __future__ import annotations

from typing import Any

import grpc


class MlgwError(Exception):
    """Base class of every error this package raises."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class InvalidSpec(MlgwError):
    """The request was refused; ``field`` is the path of the offending field (e.g.
    ``spec.command``)."""

    def __init__(self, message: str, field: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message, code)
        self.field = field


class NotFound(MlgwError):
    """No such job, endpoint or target."""


class AlreadyExists(MlgwError):
    """An endpoint with that name already exists."""


class PermissionDenied(MlgwError):
    """The target was not granted a capability it needed, or the backend refused."""


class FailedPrecondition(MlgwError):
    """The object is not in a state that allows this (e.g. predicting on a deleted endpoint)."""


class Unavailable(MlgwError):
    """The gateway or the backend cannot be reached right now; retrying may help."""


class Unsupported(MlgwError):
    """The target does not support this (e.g. canary rollouts on the local target)."""


class Timeout(MlgwError):
    """A deadline passed: the client's own timeout or a plugin's."""


class ResourceExhausted(MlgwError):
    """A limit was hit (e.g. a plugin's memory cap)."""


class JobFailed(MlgwError):
    """The job ended without succeeding; ``reason`` is the backend's word on why."""

    def __init__(self, job: Any, reason: str) -> None:
        super().__init__(f"job {job.id} {job.state}: {reason}")
        self.job = job
        self.reason = reason


class JobCancelled(JobFailed):
    """The job was cancelled."""


class EndpointFailed(MlgwError):
    """The endpoint could not become ready."""


_BY_CODE: dict[grpc.StatusCode, type[MlgwError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNIMPLEMENTED: Unsupported,
    grpc.StatusCode.DEADLINE_EXCEEDED: Timeout,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}


def field_of(message: str, trailers: Any = ()) -> str:
    """The field path: the ``mlgw-field`` trailer, else the part before ``": "``."""
    for key, value in trailers or ():
        if key == "mlgw-field":
            return value if isinstance(value, str) else value.decode()
    head, sep, _ = message.partition(": ")
    return head if sep and " " not in head else ""


def from_rpc_error(e: grpc.RpcError) -> MlgwError:
    code = e.code() if hasattr(e, "code") else None
    message = (e.details() if hasattr(e, "details") else None) or str(e)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        trailers = e.trailing_metadata() if hasattr(e, "trailing_metadata") else ()
        return InvalidSpec(message, field_of(message, trailers), code)
    return _BY_CODE.get(code, MlgwError)(message, code)
