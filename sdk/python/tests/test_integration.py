"""Every public method against the real gateway running the local target: real training
processes, a real MLServer, real failures."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import Gateway

import mlgw

pytestmark = pytest.mark.integration

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def wait_until_running(job: mlgw.Job, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while job.refresh().state != "running":
        assert job.state == "pending", f"job ended early: {job.state} {job.message}"
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.1)


# -- the client ---------------------------------------------------------------------------------


def test_targets(client: mlgw.Client) -> None:
    targets = client.targets()
    assert isinstance(targets, mlgw.TargetList)
    assert [t.name for t in targets] == ["local"]
    local = targets.default
    assert local is not None and local.name == "local" and local.is_default
    assert local.plugin == "local" and local.healthy
    assert local.supports("training") and local.supports("serving")
    assert local.supports("training-logs") and local.supports("TRAINING_CANCEL")
    assert not local.supports("canary")
    assert "process" in local.grants
    df = targets.to_pandas()
    assert list(df["name"]) == ["local"] and bool(df["serving"][0]) and not bool(df["canary"][0])
    assert "local" in targets._repr_html_() and "local" in local._repr_html_()
    assert client.get_target("local") == local
    with pytest.raises(mlgw.NotFound) as e:
        client.get_target("nowhere")
    assert "nowhere" in e.value.message


def test_address_from_environment(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLGW_SERVER", gateway.address)
    with mlgw.Client() as c:
        assert c.address == gateway.address
        assert repr(c) == f"mlgw.Client({gateway.address!r})"
        assert c.targets()[0].name == "local"
    monkeypatch.setenv("MLGW_SERVER", f"http://{gateway.address}/")
    with mlgw.Client() as c:
        assert c.targets()[0].name == "local"


def test_token_and_options_are_accepted(gateway: Gateway) -> None:
    opts = [("grpc.keepalive_time_ms", 60_000)]
    with mlgw.Client(gateway.address, token="secret", timeout=10, options=opts) as c:
        assert c.targets()[0].name == "local"


def test_tls_to_a_plaintext_gateway_is_unavailable(gateway: Gateway) -> None:
    with mlgw.Client(gateway.address, tls=True, timeout=5) as c, pytest.raises(mlgw.Unavailable):
        c.targets()


def test_unreachable_gateway_is_unavailable() -> None:
    with mlgw.Client("127.0.0.1:1", timeout=5) as c:
        with pytest.raises(mlgw.Unavailable) as e:
            c.targets()
        assert e.value.code is not None and e.value.message


def test_a_closed_client_says_so(gateway: Gateway) -> None:
    c = mlgw.Client(gateway.address)
    c.close()
    with pytest.raises(mlgw.MlgwError, match="closed"):
        c.jobs()


# -- training -----------------------------------------------------------------------------------


def test_train_wait_logs_refresh(
    client: mlgw.Client,
    gateway: Gateway,
    train_script: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job = client.train(
        [gateway.python, train_script], name="iris", hyperparameters={"C": 0.5}, framework="sklearn"
    )
    assert isinstance(job, mlgw.Job)
    assert job.id and job.target == "local" and job.name == "iris"
    assert job.state in ("pending", "running") and not job.done
    assert job.hyperparameters == {"C": "0.5"}
    assert job.command == [gateway.python, train_script]
    assert job.created_at is not None and job.finished_at is None

    assert job.wait(timeout=180) is job  # progress display on
    assert "succeeded" in capsys.readouterr().err
    assert job.state == "succeeded" and job.done
    assert job.finished_at is not None and job.finished_at >= job.created_at
    assert job.output_uri.startswith("file://")
    assert (Path(job.output_uri.removeprefix("file://")) / "model.joblib").is_file()

    texts = list(job.logs())
    assert len(texts) == 2 and "done" in texts
    assert any(t.startswith("accuracy 0.9") for t in texts)
    lines = list(job.log_lines())
    assert {(ln.source, ln.text.split()[0]) for ln in lines} == {
        ("stdout", "accuracy"),
        ("stderr", "done"),
    }
    assert all(isinstance(ln, mlgw.LogLine) and str(ln) == ln.text for ln in lines)
    assert all(ln.time is not None for ln in lines)

    again = client.get_job(job.id)
    assert again == job and again.state == "succeeded" and again.proto.id == job.id
    assert job.refresh() is job and job.state == "succeeded"
    assert job.to_dict()["state"] == "succeeded"
    assert repr(job).startswith("Job(id=")
    html = job._repr_html_()
    assert job.id in html and "succeeded" in html and "<table" in html
    # Waiting on a finished job returns at once.
    assert job.wait(progress=False) is job


def test_log_cursor_resumes(client: mlgw.Client, gateway: Gateway) -> None:
    code = "for i in range(5): print('line', i, flush=True)"
    job = client.train([gateway.python, "-c", code]).wait(timeout=60, progress=False)
    lines = list(job.log_lines())
    assert [ln.text for ln in lines] == [f"line {i}" for i in range(5)]
    assert lines[-1].cursor
    assert list(job.logs(cursor=lines[-1].cursor)) == []
    with pytest.raises(mlgw.InvalidSpec):
        list(job.logs(cursor="not-a-cursor"))


def test_every_log_line_has_a_cursor(client: mlgw.Client, gateway: Gateway) -> None:
    code = "for i in range(5): print('line', i, flush=True)"
    job = client.train([gateway.python, "-c", code]).wait(timeout=60, progress=False)
    lines = list(job.log_lines())
    assert all(ln.cursor for ln in lines), [ln.cursor for ln in lines]
    assert list(job.logs(cursor=lines[1].cursor)) == ["line 2", "line 3", "line 4"]


def test_env_inputs_output_and_hyperparameter_types(
    client: mlgw.Client, gateway: Gateway, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.txt").write_text("42")
    out = tmp_path / "out"
    out.mkdir()
    code = (
        "import json, os\n"
        "print(os.environ['GREETING'])\n"
        "print(open(os.path.join(os.environ['MLGW_INPUT_TRAIN'], 'x.txt')).read())\n"
        "print(json.dumps(json.load(open(os.environ['MLGW_HYPERPARAMETERS'])), sort_keys=True))\n"
        "open(os.path.join(os.environ['MLGW_OUTPUT_DIR'], 'm.txt'), 'w').write('m')\n"
    )
    job = client.train(
        [gateway.python, "-c", code],
        env={"GREETING": "hi"},
        inputs={"train": f"file://{data}"},
        output=str(out),
        hyperparameters={"lr": 0.1, "epochs": 3, "fast": True, "layers": [64, 32], "opt": "adam"},
        max_runtime=120,
    ).wait(timeout=60, progress=False)
    lines = list(job.logs())
    assert lines[:2] == ["hi", "42"]
    assert json.loads(lines[2]) == {
        "epochs": "3",
        "fast": "true",
        "layers": "[64, 32]",
        "lr": "0.1",
        "opt": "adam",
    }
    assert (out / "m.txt").read_text() == "m"
    assert job.output_uri.removeprefix("file://").rstrip("/") == str(out)


def test_a_string_command_is_split_like_a_shell(client: mlgw.Client, gateway: Gateway) -> None:
    job = client.train(f"{gateway.python} -c 'print(\"a b\")'").wait(timeout=60, progress=False)
    assert list(job.logs()) == ["a b"]


def test_idempotency_key(client: mlgw.Client, gateway: Gateway) -> None:
    key = f"sdk-{time.time_ns()}"
    a = client.train([gateway.python, "-c", "pass"], idempotency_key=key)
    b = client.train([gateway.python, "-c", "pass"], idempotency_key=key)
    assert a.id == b.id
    a.wait(timeout=60, progress=False)


def test_jobs_listing(client: mlgw.Client, gateway: Gateway) -> None:
    done = client.train([gateway.python, "-c", "pass"], name="listed").wait(
        timeout=60, progress=False
    )
    jobs = client.jobs()
    assert isinstance(jobs, mlgw.JobList) and done in jobs
    assert jobs[0].created_at >= jobs[-1].created_at  # newest first
    assert done.id in [j.id for j in client.jobs(state="succeeded")]
    assert all(j.state == "succeeded" for j in client.jobs(state="SUCCEEDED"))
    assert all(j.target == "local" for j in client.jobs(target="local"))
    assert len(client.jobs(limit=1)) == 1
    df = jobs.to_pandas()
    assert {"id", "name", "target", "state", "output_uri", "created_at"} <= set(df.columns)
    assert len(df) == len(jobs) and done.id in set(df["id"])
    assert done.id in jobs._repr_html_()
    assert "none" in mlgw.JobList()._repr_html_()
    with pytest.raises(ValueError):
        client.jobs(state="bogus")
    with pytest.raises(mlgw.NotFound):
        client.jobs(target="nowhere")


def test_a_failing_job_raises_with_the_reason(client: mlgw.Client, gateway: Gateway) -> None:
    code = "import sys; print('boom', file=sys.stderr); sys.exit(4)"
    job = client.train([gateway.python, "-c", code])
    with pytest.raises(mlgw.JobFailed) as e:
        job.wait(timeout=60, progress=False)
    assert not isinstance(e.value, mlgw.JobCancelled)
    assert "exit code 4" in e.value.reason and e.value.reason in str(e.value)
    assert e.value.job is job and job.state == "failed" and job.done
    assert job.backend_state
    assert "boom" in list(job.logs())
    assert job in client.jobs(state="failed")
    # A finished job cannot be cancelled.
    with pytest.raises(mlgw.FailedPrecondition):
        job.cancel()


def test_a_failing_job_with_progress(
    client: mlgw.Client, gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    job = client.train([gateway.python, "-c", "raise SystemExit(3)"])
    with pytest.raises(mlgw.JobFailed, match="exit code 3"):
        job.wait(timeout=60)
    assert "failed" in capsys.readouterr().err


def test_max_runtime_ends_the_job(client: mlgw.Client, gateway: Gateway) -> None:
    job = client.train([gateway.python, "-c", "import time; time.sleep(60)"], max_runtime=1)
    with pytest.raises(mlgw.JobFailed) as e:
        job.wait(timeout=60, progress=False)
    assert "runtime" in e.value.reason


def test_cancel(
    client: mlgw.Client, gateway: Gateway, cleanup: list[mlgw.Job | mlgw.Endpoint]
) -> None:
    job = client.train([gateway.python, "-c", "import time; time.sleep(600)"])
    cleanup.append(job)
    wait_until_running(job)
    assert job.cancel() is job and job.cancel_requested
    with pytest.raises(mlgw.JobCancelled) as e:
        job.wait(timeout=60, progress=False)
    assert isinstance(e.value, mlgw.JobFailed) and e.value.job.state == "cancelled"
    assert job.state == "cancelled" and job.finished_at is not None


def test_wait_times_out_and_the_job_keeps_running(
    client: mlgw.Client, gateway: Gateway, cleanup: list[mlgw.Job | mlgw.Endpoint]
) -> None:
    job = client.train([gateway.python, "-c", "import time; time.sleep(600)"])
    cleanup.append(job)
    start = time.monotonic()
    with pytest.raises(mlgw.Timeout, match="still"):
        job.wait(timeout=1.5, progress=True)
    assert time.monotonic() - start < 10
    assert not job.refresh().done
    job.cancel()
    with pytest.raises(mlgw.JobCancelled):
        job.wait(timeout=60, progress=False)


def test_follow_logs(client: mlgw.Client, gateway: Gateway) -> None:
    code = "import time\nfor i in range(3):\n    print('step', i, flush=True)\n    time.sleep(0.5)"
    job = client.train([gateway.python, "-c", code])
    seen = []
    for line in job.logs(follow=True, timeout=60):
        seen.append(line)
        if len(seen) == 1:
            # The first line arrives while the job still runs.
            assert not job.refresh().done
    assert seen == ["step 0", "step 1", "step 2"]
    job.wait(timeout=30, progress=False)


def test_invalid_specs_name_the_field(client: mlgw.Client, gateway: Gateway) -> None:
    cases = [
        ({"command": []}, "spec.command"),
        ({"command": ["true"], "gpus": 1}, "spec.resources.gpus"),
        ({"command": ["true"], "nodes": 2}, "spec.resources.nodes"),
        ({"command": ["true"], "env": {"1X": "y"}}, "spec.env.1X"),
        ({"command": ["true"], "output": "relative/dir"}, "spec.output_uri"),
        ({"command": ["true"], "inputs": {"a-b": "/tmp", "a_b": "/tmp"}}, "spec.inputs.1.name"),
    ]
    for kwargs, field in cases:
        command = kwargs.pop("command")
        with pytest.raises(mlgw.InvalidSpec) as e:
            client.train(command, **kwargs)  # type: ignore[arg-type]
        assert e.value.field == field, e.value.message
        assert e.value.message.startswith(f"{field}: ")
        assert e.value.code is not None and e.value.code.name == "INVALID_ARGUMENT"
    # Checked before anything is sent.
    with pytest.raises(mlgw.InvalidSpec) as e:
        client.train(["true"], gpus=-1)
    assert e.value.field == "spec.resources.gpus" and e.value.code is None
    with pytest.raises(mlgw.InvalidSpec) as e:
        client.train(["true"], max_runtime=0)
    assert e.value.field == "spec.max_runtime_seconds"


def test_unknown_ids_and_targets(client: mlgw.Client) -> None:
    with pytest.raises(mlgw.NotFound) as e:
        client.get_job("j-does-not-exist")
    assert "j-does-not-exist" in e.value.message and e.value.code.name == "NOT_FOUND"
    with pytest.raises(mlgw.NotFound):
        client.train(["true"], target="nowhere")
    with pytest.raises(mlgw.NotFound):
        client.get_endpoint("nope")
    with pytest.raises(mlgw.NotFound):
        client.predict("nope", ROWS)
    with pytest.raises(mlgw.NotFound):
        client.deploy("file:///tmp/m", model_format="sklearn", name="nope", target="nowhere")


# -- serving ------------------------------------------------------------------------------------


def model_predictions(python: str, model_dir: str, rows: object) -> list[object]:
    code = (
        "import joblib, json, sys; m = joblib.load(sys.argv[1]); "
        "print(json.dumps(m.predict(json.loads(sys.argv[2])).tolist()))"
    )
    out = subprocess.run(
        [python, "-c", code, f"{model_dir}/model.joblib", json.dumps(rows)],
        check=True,
        capture_output=True,
        text=True,
    )
    return list(json.loads(out.stdout))


def test_deploy_predict_update_delete(
    client: mlgw.Client,
    gateway: Gateway,
    trained: mlgw.Job,
    cleanup: list[mlgw.Job | mlgw.Endpoint],
) -> None:
    want = model_predictions(gateway.python, trained.output_uri.removeprefix("file://"), ROWS)

    ep = client.deploy(trained.output_uri, model_format="sklearn", name="sdk-iris")
    cleanup.append(ep)
    assert isinstance(ep, mlgw.Endpoint)
    assert ep.state == "creating" and ep.name == "sdk-iris" and ep.target == "local"
    assert ep.model_uri == trained.output_uri and ep.model_format == "sklearn"
    assert ep.wait_ready(timeout=180) is ep
    assert ep.ready and ep.url.startswith("http") and ep.canary_percent is None

    for x in (
        np.array(ROWS),
        np.array(ROWS, dtype=np.float32),
        pd.DataFrame(ROWS, columns=["sl", "sw", "pl", "pw"]),
        ROWS,
        np.asfortranarray(np.array(ROWS)),
    ):
        got = ep.predict(x)
        # MLServer answers 1-D predictions with shape [N, 1]; the SDK keeps the server's shape.
        assert isinstance(got, np.ndarray) and got.dtype == np.int64 and got.shape in [(3,), (3, 1)]
        assert got.ravel().tolist() == want
    assert client.predict("sdk-iris", ROWS, request_id="r-1").ravel().tolist() == want
    assert client.predict(ep.id, {"input-0": np.array(ROWS)}).ravel().tolist() == want

    assert client.get_endpoint("sdk-iris") == ep
    assert client.get_endpoint(ep.id).name == "sdk-iris"
    assert ep.refresh() is ep and ep.ready
    listed = client.endpoints()
    assert isinstance(listed, mlgw.EndpointList) and ep in listed
    assert ep in client.endpoints(target="local", state="ready")
    assert ep not in client.endpoints(state="failed")
    df = listed.to_pandas()
    assert "sdk-iris" in set(df["name"]) and {"id", "state", "model_uri"} <= set(df.columns)
    assert "sdk-iris" in listed._repr_html_() and "ready" in ep._repr_html_()
    assert repr(ep).startswith("Endpoint(id=")
    with pytest.raises(ValueError):
        client.endpoints(state="bogus")

    # Refusals come back typed.
    with pytest.raises(mlgw.AlreadyExists):
        client.deploy(trained.output_uri, model_format="sklearn", name="sdk-iris")
    with pytest.raises(mlgw.Unsupported):
        ep.update(canary_percent=10)
    with pytest.raises(mlgw.InvalidSpec) as e:
        ep.update(canary_percent=150)
    assert e.value.field == "spec.canary_percent"
    with pytest.raises(mlgw.InvalidSpec) as e:
        ep.update(max_replicas=3)
    assert e.value.field == "spec.max_replicas"
    # The model wants four features: MLServer fails the request (HTTP 500, so INTERNAL); it
    # still comes back as a typed error with the model server's message.
    with pytest.raises(mlgw.MlgwError) as err:
        ep.predict([[1.0, 2.0, 3.0]])
    assert err.value.code is not None and "model server" in err.value.message

    # A new model rolls out while the endpoint keeps its identity.
    assert ep.update(model_uri=trained.output_uri) is ep
    assert ep.state in ("updating", "ready")
    ep.wait_ready(timeout=180)
    assert ep.predict(ROWS).ravel().tolist() == want
    assert client.get_endpoint("sdk-iris").id == ep.id

    assert ep.delete() is ep and ep.state == "deleted"
    assert ep not in client.endpoints()
    assert ep in client.endpoints(include_deleted=True)
    assert ep in client.endpoints(state="deleted")
    with pytest.raises(mlgw.FailedPrecondition):
        ep.predict(ROWS)
    with pytest.raises(mlgw.FailedPrecondition):
        ep.update(model_uri=trained.output_uri)
    with pytest.raises(mlgw.EndpointFailed) as failed:
        ep.wait_ready(timeout=5)
    assert failed.value.endpoint is ep


def test_deploy_refusals(client: mlgw.Client, trained: mlgw.Job) -> None:
    uri = trained.output_uri
    cases = [
        ({"model_uri": "", "model_format": "sklearn", "name": "x-1"}, "spec.model_uri"),
        ({"model_uri": uri, "model_format": "nonsense", "name": "x-2"}, "spec.model_format"),
        ({"model_uri": uri, "model_format": "sklearn", "name": "Not_A_Name"}, "spec.name"),
        (
            {"model_uri": uri, "model_format": "sklearn", "name": "x-3", "gpus": 1},
            "spec.resources.gpus",
        ),
        (
            {
                "model_uri": uri,
                "model_format": "sklearn",
                "name": "x-4",
                "min_replicas": 2,
                "max_replicas": 2,
            },
            "spec.max_replicas",
        ),
    ]
    for kwargs, field in cases:
        model_uri = kwargs.pop("model_uri")
        with pytest.raises(mlgw.InvalidSpec) as e:
            client.deploy(model_uri, **kwargs)  # type: ignore[arg-type]
        assert e.value.field in (field, "spec.min_replicas"), e.value.message
    with pytest.raises(mlgw.Unsupported):
        client.deploy(uri, model_format="sklearn", name="x-5", canary_percent=10)
    with pytest.raises(mlgw.InvalidSpec) as e:
        client.deploy(uri, model_format="sklearn", name="x-6", min_replicas=-1)
    assert e.value.field == "spec.min_replicas" and e.value.code is None


def test_wait_ready_reports_a_failed_endpoint(
    client: mlgw.Client, tmp_path: Path, cleanup: list[mlgw.Job | mlgw.Endpoint]
) -> None:
    ep = client.deploy(f"file://{tmp_path}/no-model", model_format="sklearn", name="sdk-broken")
    cleanup.append(ep)
    with pytest.raises(mlgw.EndpointFailed) as e:
        ep.wait_ready(timeout=120)
    assert e.value.endpoint.state == "failed" and e.value.reason
    assert ep.state == "failed" and ep in client.endpoints(state="failed")
    with pytest.raises(mlgw.FailedPrecondition):
        ep.predict(ROWS)
    ep.delete()
    assert ep.state == "deleted"


def test_wait_ready_times_out(client: mlgw.Client, trained: mlgw.Job) -> None:
    ep = client.deploy(trained.output_uri, model_format="sklearn", name="sdk-slow")
    try:
        with pytest.raises(mlgw.Timeout, match="still"):
            ep.wait_ready(timeout=0.01)
    finally:
        ep.delete()


MIXED_TRAIN = """
import os, joblib, pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder
df = pd.DataFrame({"colour": ["red", "blue"] * 20, "size": [1.0, 2.0, 1.5, 2.5] * 10})
y = ["hot" if c == "red" else "cold" for c in df["colour"]]
pre = ColumnTransformer([("c", OneHotEncoder(), ["colour"])], remainder="passthrough")
model = make_pipeline(pre, LogisticRegression()).fit(df, y)
joblib.dump(model, os.path.join(os.environ["MLGW_OUTPUT_DIR"], "model.joblib"))
"""


def test_mixed_dataframe_and_string_outputs(client: mlgw.Client, gateway: Gateway) -> None:
    """A DataFrame with a string column goes as one tensor per column (content_type pd) and
    string predictions come back as BYTES, decoded to str."""
    job = client.train([gateway.python, "-c", MIXED_TRAIN]).wait(timeout=180, progress=False)
    ep = client.deploy(job.output_uri, model_format="sklearn", name="sdk-mixed")
    try:
        ep.wait_ready(timeout=180)
        x = pd.DataFrame({"colour": ["red", "blue"], "size": [1.2, 2.2]})
        got = ep.predict(x)
        assert isinstance(got, np.ndarray)
        assert got.dtype == object and got.ravel().tolist() == ["hot", "cold"]
    finally:
        ep.delete()


# -- artifacts ----------------------------------------------------------------------------------


def untar(path: Path) -> dict[str, bytes | None]:
    """An archive's members: file contents, None for directories and links."""
    with tarfile.open(path) as tar:
        return {
            m.name: (tar.extractfile(m).read() if m.isfile() else None)  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


def test_upload_stat_list_download_a_file(
    client: mlgw.Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content = os.urandom(5 * 1024 * 1024 + 123)  # several chunks, and a progress bar
    sha = hashlib.sha256(content).hexdigest()
    f = tmp_path / "model.bin"
    f.write_bytes(content)

    art = client.upload(f)
    assert "uploading model.bin" in capsys.readouterr().err
    assert isinstance(art, mlgw.Artifact)
    assert (art.kind, art.name, art.size, art.sha256) == ("file", "model.bin", len(content), sha)
    assert art.uri.startswith("file://") and art.created_at is not None

    assert client.artifact(art.uri) == art
    by_hash = client.artifact(f"sha256:{sha}")
    assert (by_hash.uri, by_hash.size, by_hash.kind) == (art.uri, art.size, "file")
    assert art.refresh() is art and art.sha256 == sha
    listed = client.artifacts()
    assert isinstance(listed, mlgw.ArtifactList) and art in listed
    assert listed[0].created_at >= listed[-1].created_at  # newest first
    assert len(client.artifacts(limit=1)) == 1
    df = listed.to_pandas()
    assert {"uri", "name", "kind", "size", "sha256"} <= set(df.columns)
    assert art.uri in set(df["uri"])
    assert "model.bin" in listed._repr_html_() and sha in art._repr_html_()
    assert repr(art).startswith("Artifact(uri=")

    back = art.download(tmp_path / "back.bin")
    assert back == tmp_path / "back.bin" and back.read_bytes() == content
    assert "downloading model.bin" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.bin", "model.bin"]

    # The same bytes again: the same artifact, and nothing sent (no progress bar).
    again = client.upload(f, name="other-name")
    assert again.uri == art.uri and again.sha256 == sha
    assert "uploading" not in capsys.readouterr().err
    assert [a.uri for a in client.artifacts() if a.sha256 == sha] == [art.uri]


def make_code(root: Path, greeting: str = "hello") -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "train.py").write_text(
        "import os, pkg.helper\n"
        "print(pkg.helper.GREETING, open('data/words.txt').read().strip(), flush=True)\n"
        "print('files', ' '.join(sorted(os.listdir('.'))), flush=True)\n"
    )
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "helper.py").write_text(f"GREETING = {greeting!r}\n")
    (root / "data").mkdir()
    (root / "data" / "words.txt").write_text("from the code dir\n")
    (root / ".gitignore").write_text("*.ckpt\nout/\n")
    (root / ".mlgwignore").write_text("secrets.env\n")
    (root / "big.ckpt").write_text("ignored")
    (root / "secrets.env").write_text("TOKEN=ignored")
    (root / "out").mkdir()
    (root / "out" / "old.bin").write_text("ignored")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root


def test_upload_and_download_a_directory(client: mlgw.Client, tmp_path: Path) -> None:
    greeting = f"hi-{time.time_ns()}"
    src = make_code(tmp_path / "src", greeting)
    art = client.upload(src, progress=False)
    assert (art.kind, art.name) == ("directory", "src")
    assert client.artifact(art.uri) == art

    archive = art.download(tmp_path / "src.tar.gz", progress=False)
    got = untar(archive)
    assert sorted(got) == [
        ".gitignore",
        ".mlgwignore",
        "data",
        "data/words.txt",
        "pkg",
        "pkg/__init__.py",
        "pkg/helper.py",
        "train.py",
    ]
    assert got["data/words.txt"] == b"from the code dir\n"

    # The same tree elsewhere, written later: the same artifact.
    twin = make_code(tmp_path / "elsewhere" / "code", greeting)
    assert client.upload(twin, progress=False).uri == art.uri
    (twin / "train.py").write_text("print('changed')\n")
    assert client.upload(twin, progress=False).uri != art.uri


def test_artifact_refusals(client: mlgw.Client, tmp_path: Path) -> None:
    before = len(client.artifacts())
    src = make_code(tmp_path / "src")
    (src / "leak").symlink_to("/etc/passwd")
    with pytest.raises(mlgw.InvalidSpec) as e:
        client.upload(src)
    assert e.value.field == "path" and e.value.code is None and str(src / "leak") in str(e.value)
    assert len(client.artifacts()) == before  # nothing was sent
    with pytest.raises(mlgw.NotFound):
        client.artifact("sha256:" + "0" * 64)
    with pytest.raises(mlgw.InvalidSpec) as e:
        client.artifact("not an artifact uri")
    assert e.value.field == "uri" and e.value.code is not None


def test_train_with_code_then_deploy_the_job(
    client: mlgw.Client,
    gateway: Gateway,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cleanup: list[mlgw.Job | mlgw.Endpoint],
) -> None:
    monkeypatch.chdir(tmp_path)
    src = make_code(tmp_path / "src")
    (src / "train.py").write_text(
        (src / "train.py").read_text()
        + "import joblib, os\n"
        + "from sklearn.datasets import load_iris\n"
        + "from sklearn.linear_model import LogisticRegression\n"
        + "X, y = load_iris(return_X_y=True)\n"
        + "model = LogisticRegression(max_iter=500).fit(X, y)\n"
        + "joblib.dump(model, os.path.join(os.environ['MLGW_OUTPUT_DIR'], 'model.joblib'))\n"
    )
    # A relative code directory and a relative script: the command runs in the unpacked code.
    job = client.train([gateway.python, "train.py"], code="./src", name="sdk-code")
    cleanup.append(job)
    assert job.code_uri and job.proto.spec.code_uri == job.code_uri
    code = client.artifact(job.code_uri)
    assert code.kind == "directory" and code.name == "src"
    job.wait(timeout=180, progress=False)
    lines = list(job.logs())
    assert lines[0] == "hello from the code dir", lines
    files = set(lines[1].split()[1:])
    assert {".gitignore", ".mlgwignore", "data", "pkg", "train.py"} <= files, lines
    assert not files & {"big.ckpt", "secrets.env", "out", ".git"}, lines

    want = model_predictions(gateway.python, job.output_uri.removeprefix("file://"), ROWS)
    ep = client.deploy(job, model_format="sklearn", name="sdk-code-iris")
    cleanup.append(ep)
    ep.wait_ready(timeout=180)
    assert ep.predict(ROWS).ravel().tolist() == want
    ep.delete()


def test_code_as_an_artifact_or_its_uri(
    client: mlgw.Client, gateway: Gateway, tmp_path: Path
) -> None:
    art = client.upload(make_code(tmp_path / "src", greeting="by artifact"), progress=False)
    for code in (art, art.uri, f"sha256:{art.sha256}"):
        job = client.train([gateway.python, "train.py"], code=code).wait(timeout=60, progress=False)
        assert next(iter(job.logs())) == "by artifact from the code dir", code
    assert client.artifact(job.code_uri).sha256 == art.sha256


def test_code_refusals_submit_nothing(client: mlgw.Client, tmp_path: Path) -> None:
    before = len(client.jobs())
    src = make_code(tmp_path / "src")
    (src / "data" / "link").symlink_to(tmp_path)
    with pytest.raises(mlgw.InvalidSpec) as e:
        client.train(["python", "train.py"], code=src)
    assert e.value.field == "spec.code_uri" and str(src / "data" / "link") in e.value.message
    with pytest.raises(mlgw.InvalidSpec) as e:
        client.train(["python", "train.py"], code=tmp_path / "missing")
    assert e.value.field == "spec.code_uri"
    model = tmp_path / "m.bin"
    model.write_bytes(b"m")
    with pytest.raises(mlgw.InvalidSpec, match="file artifact"):
        client.train(["python", "train.py"], code=client.upload(model))
    assert len(client.jobs()) == before


def test_deploy_by_job_id(
    client: mlgw.Client,
    gateway: Gateway,
    trained: mlgw.Job,
    cleanup: list[mlgw.Job | mlgw.Endpoint],
) -> None:
    want = model_predictions(gateway.python, trained.output_uri.removeprefix("file://"), ROWS)
    ep = client.deploy(trained.id, model_format="sklearn", name="sdk-by-id")
    cleanup.append(ep)
    ep.wait_ready(timeout=180)
    assert ep.predict(ROWS).ravel().tolist() == want
    ep.delete()
