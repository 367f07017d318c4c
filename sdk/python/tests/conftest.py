"""Starts the real mlgw binary (embedded defaults: the local target) for the session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import mlgw


def _binary() -> str:
    path = os.environ.get("MLGW_BIN")
    if not path:
        raise RuntimeError(
            "MLGW_BIN is not set: build the gateway (cargo build -p mlgw) and point MLGW_BIN at it"
        )
    if not Path(path).is_file():
        raise RuntimeError(f"MLGW_BIN={path} does not exist")
    return path


@pytest.fixture(scope="session")
def python_exe() -> str:
    """An interpreter with scikit-learn, for training jobs."""
    return os.environ.get("MLGW_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def gateway(python_exe: str) -> Iterator[str]:
    data = Path(tempfile.mkdtemp(prefix="mlgw-sdk-"))
    env = dict(os.environ)
    # MLServer comes from the same environment as the training interpreter.
    env["PATH"] = f"{Path(python_exe).parent}{os.pathsep}{env.get('PATH', '')}"
    log = open(data / "gateway.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [_binary(), "serve", "--data-dir", str(data / "data"), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
        text=True,
    )
    address = None
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("mlgw listening on "):
            address = line.split()[-1]
            break
    if address is None:
        proc.kill()
        raise RuntimeError(f"gateway did not start; see {data / 'gateway.log'}")
    try:
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture()
def client(gateway: str) -> Iterator[mlgw.Client]:
    with mlgw.Client(gateway) as c:
        yield c


TRAIN_SCRIPT = """
import json, os, joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
X, y = load_iris(return_X_y=True)
c = float(os.environ.get("MLGW_HP_C", "1.0"))
model = LogisticRegression(C=c, max_iter=500).fit(X, y)
joblib.dump(model, os.path.join(os.environ["MLGW_OUTPUT_DIR"], "model.joblib"))
print("accuracy", round(model.score(X, y), 3), flush=True)
"""


@pytest.fixture(scope="session")
def train_script(tmp_path_factory: pytest.TempPathFactory) -> str:
    p = tmp_path_factory.mktemp("scripts") / "train.py"
    p.write_text(TRAIN_SCRIPT)
    return str(p)
