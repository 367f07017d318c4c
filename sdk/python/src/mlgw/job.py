"""Training jobs."""

from __future__ import annotations

import contextlib
import datetime as _dt
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from . import _display
from ._common import progress_class, timestamp, to_pandas
from ._proto.mlgw.v1 import training_pb2
from ._stream import TICK, pump
from .errors import JobCancelled, JobFailed, MlgwError, Timeout, Unavailable

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Job", "JobList", "JobState", "LogLine"]

JobState = Literal["pending", "running", "succeeded", "failed", "cancelled", "unknown"]

STATES: dict[int, JobState] = {
    training_pb2.JOB_STATE_PENDING: "pending",
    training_pb2.JOB_STATE_RUNNING: "running",
    training_pb2.JOB_STATE_SUCCEEDED: "succeeded",
    training_pb2.JOB_STATE_FAILED: "failed",
    training_pb2.JOB_STATE_CANCELLED: "cancelled",
}
STATE_VALUES: dict[str, int] = {v: k for k, v in STATES.items()}
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

# Watch streams that break after they were established are reopened this many times in a row.
_WATCH_RETRIES = 5


@dataclass(frozen=True)
class LogLine:
    """One line of a job's output. ``cursor`` resumes after it: ``job.logs(cursor=...)``."""

    text: str
    source: str
    time: _dt.datetime | None
    cursor: str

    def __str__(self) -> str:
        return self.text


def _progress_bar(desc: str) -> Any:
    return progress_class()(
        total=None,
        desc=desc,
        bar_format="{desc}: {postfix} [{elapsed}]",
        postfix="connecting",
        leave=True,
    )


class Job:
    """A training job. Attributes reflect the gateway's last answer; :meth:`refresh` asks
    again, :meth:`wait` follows the job until it ends."""

    def __init__(self, client: Client, message: training_pb2.Job) -> None:
        self._client = client
        self._pb = message

    # -- attributes -------------------------------------------------------------------------

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
    def state(self) -> JobState:
        """``pending``, ``running``, ``succeeded``, ``failed`` or ``cancelled``."""
        return STATES.get(self._pb.state, "unknown")

    @property
    def message(self) -> str:
        """Why it failed, or what the backend last said."""
        return self._pb.message

    @property
    def backend_state(self) -> str:
        """The backend's own word for the state (e.g. ``"exit 3"``)."""
        return self._pb.backend_state

    @property
    def backend_ref(self) -> str:
        """Where the backend runs it (a pid, an ARN, namespace/name)."""
        return self._pb.backend_ref

    @property
    def output_uri(self) -> str:
        """Where the job's output (its model) is, e.g. ``file:///.../output``."""
        return self._pb.output_uri

    @property
    def code_uri(self) -> str:
        """The artifact holding the job's code (``train(code=...)``); empty without one."""
        return self._pb.spec.code_uri

    @property
    def command(self) -> list[str]:
        return list(self._pb.spec.command) + list(self._pb.spec.args)

    @property
    def hyperparameters(self) -> dict[str, str]:
        return dict(self._pb.spec.hyperparameters)

    @property
    def cancel_requested(self) -> bool:
        return self._pb.cancel_requested

    @property
    def created_at(self) -> _dt.datetime | None:
        return timestamp(self._pb, "created_at")

    @property
    def updated_at(self) -> _dt.datetime | None:
        return timestamp(self._pb, "updated_at")

    @property
    def finished_at(self) -> _dt.datetime | None:
        return timestamp(self._pb, "finished_at")

    @property
    def done(self) -> bool:
        """Whether the job has ended (succeeded, failed or cancelled)."""
        return self.state in TERMINAL

    @property
    def proto(self) -> training_pb2.Job:
        """The underlying ``mlgw.v1.Job`` message."""
        return self._pb

    # -- actions ----------------------------------------------------------------------------

    def refresh(self) -> Job:
        """Fetches the job's current state; returns ``self``."""
        c = self._client
        self._pb = c._call(c._training.Get, training_pb2.GetJobRequest(id=self.id))
        return self

    def wait(self, timeout: float | None = None, progress: bool = True) -> Job:
        """Blocks until the job ends, following the gateway's Watch stream.

        Returns ``self`` when the job succeeded. Raises :class:`~mlgw.JobFailed` with the
        backend's reason when it failed, :class:`~mlgw.JobCancelled` when it was cancelled, and
        :class:`~mlgw.Timeout` when ``timeout`` seconds pass first (the job keeps running).
        ``progress`` shows a tqdm display (a widget in Jupyter, text in a terminal)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        label = f"{self.name} ({self.id})" if self.name else self.id
        bar = _progress_bar(label) if progress else None
        try:
            self._follow(deadline, timeout, bar)
        finally:
            if bar is not None:
                if self.state == "succeeded":
                    bar.colour = "green"
                elif self.done:
                    bar.colour = "red"
                bar.set_postfix_str(self._status_text(), refresh=True)
                bar.close()
        if self.state == "failed":
            raise JobFailed(self, self.message or self.backend_state)
        if self.state == "cancelled":
            raise JobCancelled(self, self.message or "cancelled")
        return self

    def _status_text(self) -> str:
        text: str = self.state
        if self.backend_state and self.backend_state.lower() != self.state:
            text += f" ({self.backend_state})"
        if self.message and self.state in ("failed", "cancelled"):
            text += f": {self.message}"
        return text

    def _follow(self, deadline: float | None, timeout: float | None, bar: Any) -> None:
        c = self._client
        failures = 0
        while not self.done:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self._timed_out(timeout)
            call = c._open_stream(
                c._training.Watch, training_pb2.WatchJobRequest(id=self.id), remaining
            )
            got_event = False
            try:
                for ev in pump(call, 0.5 if bar is not None else None):
                    if ev is TICK:
                        bar.refresh()
                        continue
                    got_event = True
                    if ev.HasField("job"):
                        self._pb = ev.job
                    else:
                        self._pb.state = ev.state
                        self._pb.message = ev.message
                    if bar is not None:
                        bar.set_postfix_str(self._status_text(), refresh=True)
            except Timeout:
                self._timed_out(timeout)
            except Unavailable:
                # The gateway went away mid-stream (a restart): reopen, a few times.
                failures = failures + 1 if not got_event else 1
                if failures > _WATCH_RETRIES:
                    raise
                time.sleep(min(0.5 * 2**failures, 5.0))
                continue
            if not self.done:
                # The stream ended without a terminal state: ask, then watch again.
                self.refresh()

    def _timed_out(self, timeout: float | None) -> None:
        with contextlib.suppress(MlgwError):  # the timeout is the news, not a failed refresh
            self.refresh()
        if not self.done:
            raise Timeout(f"job {self.id} is still {self.state} after {timeout} s")

    def logs(
        self, follow: bool = False, *, timeout: float | None = None, cursor: str | None = None
    ) -> Iterator[str]:
        """Yields the job's log lines (text only, without the newline).

        With ``follow``, keeps yielding until the job ends. ``cursor`` resumes after a line
        previously received (see :meth:`log_lines`); ``timeout`` bounds the whole stream."""
        for line in self.log_lines(follow, timeout=timeout, cursor=cursor):
            yield line.text

    def log_lines(
        self, follow: bool = False, *, timeout: float | None = None, cursor: str | None = None
    ) -> Iterator[LogLine]:
        """Like :meth:`logs`, with each line's source (``stdout``/``stderr``), time and
        resume cursor."""
        c = self._client
        req = training_pb2.JobLogsRequest(id=self.id, follow=follow, cursor=cursor or "")
        call = c._open_stream(c._training.Logs, req, timeout)
        for line in pump(call, None):
            yield LogLine(
                text=line.text,
                source=line.source,
                time=timestamp(line, "time"),
                cursor=line.cursor,
            )

    def cancel(self) -> Job:
        """Asks the target to stop the job; it ends ``cancelled``. Returns ``self`` (call
        :meth:`wait` to see the end)."""
        c = self._client
        self._pb = c._call(c._training.Cancel, training_pb2.CancelJobRequest(id=self.id))
        return self

    # -- display ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "target": self.target,
            "state": self.state,
            "message": self.message,
            "backend_state": self.backend_state,
            "output_uri": self.output_uri,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
        }

    def __repr__(self) -> str:
        return (
            f"Job(id={self.id!r}, name={self.name!r}, target={self.target!r}, state={self.state!r})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("job", self.id))

    def _repr_html_(self) -> str:
        fields = self.to_dict()
        fields["command"] = " ".join(self.command)
        fields["hyperparameters"] = self.hyperparameters
        fields["code_uri"] = self.code_uri
        fields["backend_ref"] = self.backend_ref
        return _display.record(f"Job {self.id}", fields)


@dataclass(frozen=True)
class JobChange:
    """One change from :meth:`Client.watch_jobs`: the job as it was after the change, and the
    change's place in the gateway's feed (pass it as ``after`` to resume)."""

    feed_sequence: int
    job: Job


class JobList(list[Job]):
    """Jobs, newest first. ``to_pandas()`` gives a DataFrame; Jupyter shows a table."""

    COLUMNS = ("id", "name", "target", "state", "message", "output_uri", "created_at")

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` with one row per job."""
        return to_pandas((j.to_dict() for j in self), _JOB_COLS)

    def _repr_html_(self) -> str:
        return _display.table([j.to_dict() for j in self], self.COLUMNS, f"{len(self)} jobs")


_JOB_COLS = (
    "id",
    "name",
    "target",
    "state",
    "message",
    "backend_state",
    "output_uri",
    "created_at",
    "finished_at",
)
