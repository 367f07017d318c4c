"""The integration tests' gateway: the real ``mlgw`` binary (``$MLGW_BIN``) on its embedded
defaults (one target, ``local``), started once per session on a free port.

Training jobs run ``$MLGW_PYTHON`` (default: this interpreter), which must have scikit-learn;
the gateway's PATH starts with that interpreter's directory, where ``mlserver`` must be.

At the end of the session every job must have ended and every endpoint must have been deleted:
whatever the gateway started and is still alive once it stopped fails the session, named with
the test it came from (see ``leaks``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import leaks
import pytest

import mlgw

START_TIMEOUT = float(os.environ.get("MLGW_START_TIMEOUT", "60"))
# How long, after the gateway stopped, what it started may take to finish ending.
LEAK_GRACE = float(os.environ.get("MLGW_LEAK_GRACE", "10"))

# grpc.health.v1.HealthCheckResponse{status: SERVING}, encoded.
_SERVING = b"\x08\x01"


@dataclass(frozen=True)
class Gateway:
    address: str
    data_dir: Path
    log: Path
    python: str
    ledger: leaks.Ledger = field(default_factory=leaks.Ledger, compare=False, repr=False)


def _binary() -> str:
    path = os.environ.get("MLGW_BIN")
    if not path:
        pytest.fail(
            "MLGW_BIN is not set: the integration tests need the real gateway. Build it "
            "(cargo build -p mlgw) and set MLGW_BIN to the binary, e.g. "
            "MLGW_BIN=$CARGO_TARGET_DIR/debug/mlgw",
            pytrace=False,
        )
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"MLGW_BIN={path} is not an executable file", pytrace=False)
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(address: str) -> bool:
    """One grpc.health.v1 check, then one TargetService.List through the SDK."""
    with grpc.insecure_channel(address) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda _: b"",
            response_deserializer=lambda b: b,
        )
        try:
            if check(None, timeout=2) != _SERVING:
                return False
        except grpc.RpcError:
            return False
    with mlgw.Client(address, timeout=5) as c:
        try:
            return len(c.targets()) > 0
        except mlgw.MlgwError:
            return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def start_gateway(
    binary: str, root: Path, env: dict[str, str], log_path: Path, config: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Starts ``mlgw serve`` on a free loopback port with its data under ``root`` (and
    ``config``, if given) and waits, with a bound, until it answers; fails the test if not."""
    proc = None
    address = ""
    extra = ["--config", str(config)] if config else []
    with open(log_path, "ab") as log:
        for _attempt in range(3):  # another process may grab the free port first
            address = f"127.0.0.1:{_free_port()}"
            proc = subprocess.Popen(
                [binary, "serve", *extra, "--data-dir", str(root / "data"), "--listen", address],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            deadline = time.monotonic() + START_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                if _healthy(address):
                    break
                time.sleep(0.2)
            else:
                if proc.poll() is None:  # still starting after the deadline
                    _stop(proc)
                    pytest.fail(
                        f"the gateway did not answer on {address} within {START_TIMEOUT:.0f} s; "
                        f"log {log_path}:\n{_tail(log_path)}",
                        pytrace=False,
                    )
                continue  # it exited: try another port
            break
        else:
            pytest.fail(
                f"the gateway exited at start (code {proc.returncode if proc else '?'}); "
                f"log {log_path}:\n{_tail(log_path)}",
                pytrace=False,
            )
    assert proc is not None
    return proc, address


@pytest.fixture(scope="session")
def python_exe() -> str:
    """An interpreter with scikit-learn, for training jobs (``$MLGW_PYTHON``)."""
    return os.environ.get("MLGW_PYTHON") or sys.executable


@pytest.fixture(scope="session")
def gateway(python_exe: str) -> Iterator[Gateway]:
    binary = _binary()
    root = Path(tempfile.mkdtemp(prefix="mlgw-sdk-tests-"))
    log_path = root / "gateway.log"
    env = dict(os.environ)
    # The venv's bin first: mlserver, and the interpreter with scikit-learn. Not resolved:
    # a venv's python is a symlink whose directory is what matters.
    env["PATH"] = os.pathsep.join([str(Path(python_exe).parent), env.get("PATH", "")])
    env.pop("MLGW_SERVER", None)
    env.setdefault("RUST_LOG", "info")

    proc, address = start_gateway(binary, root, env, log_path)
    # A session leader (start_new_session): everything it starts shares its session id.
    session = proc.pid if os.getsid(proc.pid) == proc.pid else None
    gw = Gateway(
        address=address,
        data_dir=root / "data",
        log=log_path,
        python=python_exe,
        ledger=leaks.Ledger(session),
    )
    try:
        yield gw
    finally:
        # Asked before it stops: jobs and model servers outlive the gateway by design.
        started: list[leaks.Started] = []
        unlisted = ""
        try:
            with mlgw.Client(address, timeout=10) as c:
                started = gw.ledger.note(c, "the session's teardown")
        except mlgw.MlgwError as e:
            unlisted = f"\n  (the gateway could not list what it started: {e})"
        _stop(proc)
        leaked: list[str] = []
        leaks.check(
            started,
            session,
            grace=LEAK_GRACE,
            group_test=gw.ledger.group_test,
            on_leak=leaked.append,
        )
        if os.environ.get("MLGW_KEEP_DATA") or leaked:
            print(f"\ngateway data and log kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
        if leaked:
            pytest.fail(f"{leaked[0]}{unlisted}\ngateway data and log: {root}", pytrace=False)


@pytest.fixture(autouse=True)
def _credit_what_each_test_started(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used the gateway, credits it with the jobs, endpoints and process
    groups that appeared, so a leak found at the session's end names the test it came from."""
    yield
    if "gateway" not in request.fixturenames:
        return
    gw: Gateway = request.getfixturevalue("gateway")
    with contextlib.suppress(mlgw.MlgwError), mlgw.Client(gw.address, timeout=10) as c:
        gw.ledger.note(c, request.node.nodeid)


@pytest.fixture()
def client(gateway: Gateway) -> Iterator[mlgw.Client]:
    with mlgw.Client(gateway.address) as c:
        yield c


@pytest.fixture()
def cleanup() -> Iterator[list[mlgw.Job | mlgw.Endpoint]]:
    """Jobs and endpoints a test started, cancelled or deleted when it ends, however it ends: a
    failed assertion must not leave a model server or a sleeping job behind."""
    started: list[mlgw.Job | mlgw.Endpoint] = []
    yield started
    for thing in reversed(started):
        # The test's own ending (or the gateway's refusal) is what counts, not this one.
        with contextlib.suppress(mlgw.MlgwError):
            if isinstance(thing, mlgw.Endpoint):
                if thing.refresh().state != "deleted":
                    thing.delete()
            elif not thing.refresh().done:
                thing.cancel()


TRAIN_SCRIPT = """
import json, os, sys, joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
X, y = load_iris(return_X_y=True)
hps = json.load(open(os.environ["MLGW_HYPERPARAMETERS"]))
c = float(os.environ.get("MLGW_HP_C", "1.0"))
assert float(hps.get("C", "1.0")) == c
model = LogisticRegression(C=c, max_iter=500).fit(X, y)
joblib.dump(model, os.path.join(os.environ["MLGW_OUTPUT_DIR"], "model.joblib"))
print("accuracy", round(model.score(X, y), 3), flush=True)
print("done", file=sys.stderr, flush=True)
"""


@pytest.fixture(scope="session")
def train_script(tmp_path_factory: pytest.TempPathFactory) -> str:
    p = tmp_path_factory.mktemp("scripts") / "train.py"
    p.write_text(TRAIN_SCRIPT)
    return str(p)


@pytest.fixture(scope="session")
def session_client(gateway: Gateway) -> Iterator[mlgw.Client]:
    with mlgw.Client(gateway.address) as c:
        yield c


@pytest.fixture(scope="session")
def trained(session_client: mlgw.Client, gateway: Gateway, train_script: str) -> mlgw.Job:
    """One successful training job, shared by the serving tests."""
    job = session_client.train(
        [gateway.python, train_script], name="shared-iris", hyperparameters={"C": 1}
    )
    return job.wait(timeout=180, progress=False)
