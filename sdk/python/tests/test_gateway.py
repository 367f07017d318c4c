"""Every public method against a real gateway running the local target."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mlgw

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def test_train_wait_logs_and_list(client: mlgw.Client, python_exe: str, train_script: str) -> None:
    job = client.train([python_exe, train_script], name="iris", hyperparameters={"C": 0.5})
    assert job.id.startswith("j-") and job.target == "local"
    assert job.wait(timeout=120, progress=True) is job
    assert job.state == "succeeded" and job.done
    assert job.finished_at is not None and job.created_at is not None
    assert (Path(job.output_uri.removeprefix("file://")) / "model.joblib").exists()
    lines = list(job.logs())
    assert len(lines) == 1 and lines[0].startswith("accuracy ")
    assert client.get_job(job.id).state == "succeeded"
    assert job.refresh().state == "succeeded"
    listed = client.jobs(state="succeeded")
    assert job.id in [j.id for j in listed]
    assert client.jobs(target="local", state="failed") == [] or all(
        j.state == "failed" for j in client.jobs(target="local", state="failed")
    )
    df = listed.to_pandas()
    assert {"id", "state", "target"} <= set(df.columns)
    assert job.id in listed._repr_html_() and "<table>" in job._repr_html_()
    with pytest.raises(ValueError):
        client.jobs(state="bogus")


def test_a_failing_job_raises_with_the_reason(client: mlgw.Client, python_exe: str) -> None:
    job = client.train([python_exe, "-c", "import sys; sys.exit(4)"])
    with pytest.raises(mlgw.JobFailed) as e:
        job.wait(timeout=60, progress=False)
    assert "exit code 4" in e.value.reason
    assert e.value.job.state == "failed"


def test_cancel(client: mlgw.Client, python_exe: str) -> None:
    job = client.train([python_exe, "-c", "import time; time.sleep(600)"])
    deadline = time.monotonic() + 30
    while job.refresh().state != "running":
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.1)
    job.cancel()
    with pytest.raises(mlgw.JobCancelled):
        job.wait(timeout=60, progress=False)
    assert job.state == "cancelled"


def test_wait_times_out(client: mlgw.Client, python_exe: str) -> None:
    job = client.train([python_exe, "-c", "import time; time.sleep(600)"])
    with pytest.raises(mlgw.Timeout):
        job.wait(timeout=1, progress=False)
    job.cancel()


def test_follow_logs(client: mlgw.Client, python_exe: str) -> None:
    script = (
        "import time\nfor i in range(3):\n    print('step', i, flush=True)\n    time.sleep(0.2)"
    )
    job = client.train([python_exe, "-c", script])
    assert list(job.logs(follow=True, timeout=60)) == ["step 0", "step 1", "step 2"]


def test_bad_input_and_unknown_ids(client: mlgw.Client) -> None:
    with pytest.raises(mlgw.InvalidSpec) as e:
        client.train([])
    assert e.value.field == "spec.command"
    with pytest.raises(mlgw.InvalidSpec) as e:
        client.train(["true"], gpus=2)
    assert e.value.field == "spec.resources.gpus"
    with pytest.raises(mlgw.InvalidSpec) as e:
        client.train(["true"], env={"1X": "y"})
    assert e.value.field == "spec.env.1X"
    with pytest.raises(mlgw.NotFound):
        client.get_job("j-does-not-exist")
    with pytest.raises(mlgw.NotFound):
        client.train(["true"], target="nowhere")
    with pytest.raises(mlgw.NotFound):
        client.get_endpoint("nope")


def test_unreachable_gateway_is_unavailable() -> None:
    with mlgw.Client("127.0.0.1:1", timeout=5) as c, pytest.raises(mlgw.Unavailable):
        c.targets()


def test_targets(client: mlgw.Client) -> None:
    targets = client.targets()
    assert [t.name for t in targets] == ["local"]
    local = targets[0]
    assert local.default and local.healthy and local.plugin == "local"
    assert local.supports("training") and local.supports("serving")
    assert not local.supports("canary")
    assert "process" in local.grants
    assert list(targets.to_pandas()["name"]) == ["local"]


def model_predictions(python_exe: str, model_dir: str) -> list[int]:
    code = (
        f"import joblib, json; m = joblib.load('{model_dir}/model.joblib'); "
        f"print(json.dumps(m.predict({ROWS}).tolist()))"
    )
    out = subprocess.run([python_exe, "-c", code], check=True, capture_output=True, text=True)
    import json

    return json.loads(out.stdout)


def test_deploy_predict_update_delete(
    client: mlgw.Client, python_exe: str, train_script: str
) -> None:
    job = client.train([python_exe, train_script]).wait(timeout=120, progress=False)
    want = model_predictions(python_exe, job.output_uri.removeprefix("file://"))

    ep = client.deploy(job.output_uri, model_format="sklearn", name="sdk-iris")
    assert ep.state == "creating"
    assert ep.wait_ready(timeout=120) is ep
    assert ep.url.startswith("http://127.0.0.1:")

    for x in (np.array(ROWS), pd.DataFrame(ROWS, columns=list("abcd")), ROWS):
        got = ep.predict(x)
        assert isinstance(got, np.ndarray)
        assert got.ravel().tolist() == want
    # float32 input is mapped to FP32 and still answered.
    assert ep.predict(np.array(ROWS, dtype=np.float32)).ravel().tolist() == want

    assert "sdk-iris" in [e.name for e in client.endpoints()]
    assert client.get_endpoint("sdk-iris").id == ep.id
    assert "sdk-iris" in client.endpoints()._repr_html_()

    with pytest.raises(mlgw.AlreadyExists):
        client.deploy(job.output_uri, model_format="sklearn", name="sdk-iris")
    with pytest.raises(mlgw.Unsupported):
        ep.update(canary_percent=10)
    # The model wants four features: the model server's refusal comes back typed.
    with pytest.raises(mlgw.MlgwError) as e:
        ep.predict([[1.0, 2.0, 3.0]])
    assert e.value.code is not None

    ep.update(model_uri=job.output_uri)
    assert ep.state == "updating"
    ep.wait_ready(timeout=120)
    assert ep.predict(ROWS).ravel().tolist() == want

    ep.delete()
    assert ep.state == "deleted"
    assert "sdk-iris" not in [e.name for e in client.endpoints()]
    assert "sdk-iris" in [e.name for e in client.endpoints(include_deleted=True)]
    with pytest.raises(mlgw.FailedPrecondition):
        ep.predict(ROWS)


def test_wait_ready_reports_failure(client: mlgw.Client) -> None:
    ep = client.deploy("file:///nonexistent/model", model_format="sklearn", name="sdk-broken")
    with pytest.raises((mlgw.EndpointFailed, mlgw.Timeout)):
        ep.wait_ready(timeout=30)
    ep.delete()
