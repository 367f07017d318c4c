"""Tests of the AWS test server itself (moto_sagemaker_extension.py), through boto3 only: what
the SageMaker target's tests rely on must hold before they run.

The server is $MLGW_TEST_AWS_ENDPOINT (tests/run-all starts it), else tests/aws/up is run (and
the server it starts is left up, like the test control plane). Names are unique per run, since
one server outlives many runs.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

HERE = Path(__file__).resolve().parent
BUCKET = "mlgw-test-sagemaker"
ROLE = "arn:aws:iam::123456789012:role/mlgw-test-sagemaker"
GROUP = "/aws/sagemaker/TrainingJobs"
# The iris rows the serving tests use, and what the extension's fixed rule answers for them:
# floor(sum of the row) mod 3 (10.2 -> 1, 17.2 -> 2, 14.6 -> 2). Not a model's prediction.
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
RULE_ANSWER = [1, 2, 2]


@pytest.fixture(scope="session")
def endpoint() -> str:
    url = os.environ.get("MLGW_TEST_AWS_ENDPOINT")
    if url:
        return url
    out = subprocess.run([HERE / "up"], check=True, stdout=subprocess.PIPE, text=True)
    return out.stdout.strip().splitlines()[-1]


def client(endpoint: str, service: str, key: str = "S3RVER"):
    return boto3.session.Session().client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key="S3RVER",
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )


@pytest.fixture(scope="session")
def sm(endpoint):
    return client(endpoint, "sagemaker")


@pytest.fixture(scope="session")
def logs(endpoint):
    return client(endpoint, "logs")


@pytest.fixture(scope="session")
def s3(endpoint):
    return client(endpoint, "s3")


@pytest.fixture(scope="session")
def runtime(endpoint):
    return client(endpoint, "sagemaker-runtime")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_for(what: str, check, timeout: float = 20.0):
    """Polls `check` until it returns something truthy, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def error_of(call) -> tuple[str, str]:
    with pytest.raises(ClientError) as e:
        call()
    return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]


def create_job(sm, name: str, tags: dict[str, str], **extra):
    request = {
        "TrainingJobName": name,
        "AlgorithmSpecification": {
            "TrainingImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/train:1",
            "TrainingInputMode": "File",
            "ContainerEntrypoint": ["python", "train.py"],
            "ContainerArguments": ["--epochs", "3"],
        },
        "RoleArn": ROLE,
        "HyperParameters": {"C": "0.5", "max_iter": "200"},
        "InputDataConfig": [
            {
                "ChannelName": channel,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": f"s3://{BUCKET}/data/{channel}/",
                    }
                },
            }
            for channel in ("train", "validation")
        ],
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/output"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
    }
    request.update(extra)
    return sm.create_training_job(**request)


def status(sm, name: str) -> dict:
    return sm.describe_training_job(TrainingJobName=name)


def ended(sm, name: str):
    d = status(sm, name)
    return d if d["TrainingJobStatus"] in ("Completed", "Failed", "Stopped") else None


def job_events(logs, name: str) -> list[dict]:
    return logs.filter_log_events(logGroupName=GROUP, logStreamNamePrefix=f"{name}/")["events"]


def messages(logs, name: str) -> list[str]:
    return [e["message"] for e in job_events(logs, name)]


# --- training jobs ------------------------------------------------------------------------


def test_completed_job_runs_then_writes_its_model(sm, s3):
    name = unique("done")
    create_job(
        sm,
        name,
        {"mlgw-test:outcome": "Completed", "mlgw-test:duration-ms": "800"},
        Environment={"MLGW_HP_C": "0.5"},
    )
    first = status(sm, name)
    assert first["TrainingJobStatus"] == "InProgress"
    assert first["SecondaryStatus"] in ("Starting", "Training")
    assert "ModelArtifacts" not in first
    assert first["Environment"] == {"MLGW_HP_C": "0.5"}

    done = wait_for("the job to end", lambda: ended(sm, name))
    assert done["TrainingJobStatus"] == "Completed"
    assert done["SecondaryStatus"] == "Completed"
    assert [t["Status"] for t in done["SecondaryStatusTransitions"]] == [
        "Starting",
        "Training",
        "Uploading",
        "Completed",
    ]
    # Nominal times: it ended its duration after it was created.
    took = done["TrainingEndTime"] - done["CreationTime"]
    assert abs(took.total_seconds() - 0.8) < 0.002, took
    uri = f"s3://{BUCKET}/output/{name}/output/model.tar.gz"
    assert done["ModelArtifacts"]["S3ModelArtifacts"] == uri
    body = s3.get_object(Bucket=BUCKET, Key=f"output/{name}/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        model = json.load(tar.extractfile("model.json"))
    assert model["training_job"] == name
    assert model["hyperparameters"] == {"C": "0.5", "max_iter": "200"}


def test_failed_job_says_why(sm, logs):
    name = unique("fail")
    reason = "AlgorithmError: loss went to NaN"
    create_job(
        sm,
        name,
        {
            "mlgw-test:outcome": "Failed",
            "mlgw-test:duration-ms": "500",
            "mlgw-test:failure-reason": reason,
        },
    )
    done = wait_for("the job to end", lambda: ended(sm, name))
    assert done["TrainingJobStatus"] == "Failed"
    assert done["FailureReason"] == reason
    assert "ModelArtifacts" not in done
    assert messages(logs, name)[-1] == f"algo-1 error: {reason}"


def test_outcome_from_environment_when_no_tag(sm):
    name = unique("envfail")
    create_job(
        sm, name, {}, Environment={"MLGW_TEST_OUTCOME": "Failed", "MLGW_TEST_DURATION_MS": "300"}
    )
    done = wait_for("the job to end", lambda: ended(sm, name))
    assert done["TrainingJobStatus"] == "Failed"
    assert "failed by the moto test extension as asked" in done["FailureReason"]


def test_job_without_its_output_bucket_fails(sm, s3):
    name = unique("nobucket")
    create_job(
        sm,
        name,
        {"mlgw-test:duration-ms": "300"},
        OutputDataConfig={"S3OutputPath": "s3://mlgw-test-no-such-bucket/out"},
    )
    done = wait_for("the job to end", lambda: ended(sm, name))
    assert done["TrainingJobStatus"] == "Failed"
    assert "s3://mlgw-test-no-such-bucket/out" in done["FailureReason"]


def test_running_job_runs_until_stopped(sm, logs):
    name = unique("run")
    create_job(sm, name, {"mlgw-test:outcome": "Running"})
    # Past the default duration (1000 ms) by its own log: epoch 6 is 1.2 s into training.
    wait_for("epoch 6", lambda: f"algo-1 epoch 6 loss {1 / 7:.4f}" in messages(logs, name))
    assert status(sm, name)["TrainingJobStatus"] == "InProgress"
    assert status(sm, name)["SecondaryStatus"] == "Training"

    sm.stop_training_job(TrainingJobName=name)
    stopping = status(sm, name)
    # Stopped follows 300 ms after the stop; a describe right after it sees Stopping, unless
    # this machine took that long between the two calls.
    assert stopping["TrainingJobStatus"] in ("Stopping", "Stopped")
    done = wait_for("the job to stop", lambda: ended(sm, name))
    assert done["TrainingJobStatus"] == "Stopped"
    assert done["SecondaryStatus"] == "Stopped"
    assert [t["Status"] for t in done["SecondaryStatusTransitions"]][-2:] == ["Stopping", "Stopped"]
    assert "ModelArtifacts" not in done
    assert messages(logs, name)[-1] == "algo-1 stopped"
    code, message = error_of(lambda: sm.stop_training_job(TrainingJobName=name))
    assert code == "ValidationException"
    assert "in status Stopped" in message


def test_stop_of_unknown_or_ended_job_is_refused(sm):
    code, message = error_of(lambda: sm.stop_training_job(TrainingJobName=unique("nojob")))
    assert (code, message.startswith("Could not find training job")) == (
        "ValidationException",
        True,
    )
    name = unique("ended")
    create_job(sm, name, {"mlgw-test:duration-ms": "100"})
    wait_for("the job to end", lambda: ended(sm, name))
    code, message = error_of(lambda: sm.stop_training_job(TrainingJobName=name))
    assert code == "ValidationException"
    assert "in status Completed" in message


def test_bad_test_tags_are_refused_and_nothing_is_created(sm):
    for tags, words in (
        ({"mlgw-test:outcome": "Succeeded"}, "mlgw-test:outcome must be one of"),
        ({"mlgw-test:duration-ms": "soon"}, "mlgw-test:duration-ms must be a whole number"),
    ):
        name = unique("badtag")
        code, message = error_of(lambda: create_job(sm, name, tags))  # noqa: B023
        assert code == "ValidationException"
        assert words in message
        code, _ = error_of(lambda: status(sm, name))  # noqa: B023
        assert code == "ValidationException"


def test_names_in_use_are_refused(sm):
    job = unique("dup")
    create_job(sm, job, {"mlgw-test:outcome": "Running"})
    code, message = error_of(lambda: create_job(sm, job, {}))
    assert code == "ResourceInUse"
    assert job in message
    assert status(sm, job)["TrainingJobStatus"] == "InProgress", "the first job was replaced"
    sm.stop_training_job(TrainingJobName=job)

    model, config, ep = unique("m"), unique("c"), unique("e")
    create_model(sm, model, "s3://no-such/never.tar.gz")
    code, message = error_of(lambda: create_model(sm, model, "s3://other"))
    assert (code, "Cannot create already existing model" in message) == (
        "ValidationException",
        True,
    )
    create_config(sm, config, [("main", model, 1)])
    code, message = error_of(lambda: create_config(sm, config, [("main", model, 1)]))
    assert "Cannot create already existing endpoint configuration" in message
    sm.create_endpoint(EndpointName=ep, EndpointConfigName=config)
    code, message = error_of(lambda: sm.create_endpoint(EndpointName=ep, EndpointConfigName=config))
    assert "Cannot create already existing endpoint" in message
    sm.delete_endpoint(EndpointName=ep)
    sm.delete_endpoint_config(EndpointConfigName=config)
    sm.delete_model(ModelName=model)


# --- logs ---------------------------------------------------------------------------------


def test_logs_per_instance_in_sagemaker_streams(sm, logs):
    name = unique("logs")
    # A job whose name extends this one's: its streams must not leak into `name/`'s.
    other = f"{name}0"
    create_job(
        sm,
        name,
        {"mlgw-test:duration-ms": "700"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 2, "VolumeSizeInGB": 5},
    )
    create_job(sm, other, {"mlgw-test:duration-ms": "300"})
    wait_for("the jobs to end", lambda: ended(sm, name) and ended(sm, other))
    done = status(sm, name)

    streams = logs.describe_log_streams(logGroupName=GROUP, logStreamNamePrefix=f"{name}/")
    names = sorted(s["logStreamName"] for s in streams["logStreams"])
    start = int(done["TrainingStartTime"].timestamp())
    assert names == [f"{name}/algo-1-{start}", f"{name}/algo-2-{start}"]

    events = job_events(logs, name)
    assert {e["logStreamName"] for e in events} == set(names)
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps), "streams are merged in time order"
    for i, stream in enumerate(names, start=1):
        lines = [e["message"] for e in events if e["logStreamName"] == stream]
        assert lines[0] == f'algo-{i} hyperparameters {{"C": "0.5", "max_iter": "200"}}'
        assert lines[1] == f"algo-{i} channels train,validation"
        assert lines[2] == f'algo-{i} entrypoint ["python", "train.py"] arguments ["--epochs", "3"]'
        assert re.fullmatch(rf"algo-{i} epoch 1 loss 0\.5000", lines[3])
        assert lines[-1] == f"algo-{i} training complete"
        # GetLogEvents reads the same stream.
        got = logs.get_log_events(logGroupName=GROUP, logStreamName=stream, startFromHead=True)
        assert [e["message"] for e in got["events"]] == lines

    assert all(e["logStreamName"].startswith(f"{other}/") for e in job_events(logs, other))
    assert job_events(logs, unique("nologs")) == []


# --- endpoints ----------------------------------------------------------------------------


def create_model(sm, name: str, data_url: str, env: dict[str, str] | None = None):
    container = {
        "Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/serve:1",
        "ModelDataUrl": data_url,
    }
    if env:
        container["Environment"] = env
    return sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer=container)


def create_config(sm, name: str, variants: list[tuple[str, str, float]]):
    return sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": variant,
                "ModelName": model,
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1,
                "InitialVariantWeight": weight,
            }
            for variant, model, weight in variants
        ],
    )


def endpoint_status(sm, name: str) -> dict:
    return sm.describe_endpoint(EndpointName=name)


def settled(sm, name: str):
    d = endpoint_status(sm, name)
    return d if d["EndpointStatus"] in ("InService", "Failed") else None


@pytest.fixture(scope="session")
def model_uri(sm, s3) -> str:
    """A model.tar.gz a Completed job wrote."""
    name = unique("model")
    create_job(sm, name, {"mlgw-test:duration-ms": "200"})
    return wait_for("the job to end", lambda: ended(sm, name))["ModelArtifacts"]["S3ModelArtifacts"]


def predict_body(rows) -> str:
    flat = [x for row in rows for x in row]
    return json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [len(rows), len(rows[0])], "datatype": "FP64", "data": flat}
            ]
        }
    )


def test_endpoint_create_invoke_update_delete(sm, runtime, model_uri):
    model, one, two, ep = unique("m"), unique("c1"), unique("c2"), unique("e")
    create_model(sm, model, model_uri)
    create_config(sm, one, [("main", model, 1.0)])
    create_config(sm, two, [("main", model, 90.0), ("canary", model, 10.0)])
    sm.create_endpoint(
        EndpointName=ep,
        EndpointConfigName=one,
        Tags=[{"Key": "mlgw-test:duration-ms", "Value": "3000"}],
    )
    creating = endpoint_status(sm, ep)
    assert creating["EndpointStatus"] == "Creating"
    code, _ = error_of(lambda: runtime.invoke_endpoint(EndpointName=ep, Body=predict_body(ROWS)))
    assert code == "ValidationError"
    code, message = error_of(lambda: sm.update_endpoint(EndpointName=ep, EndpointConfigName=two))
    assert (code, "Cannot update in-progress endpoint" in message) == ("ValidationException", True)

    ready = wait_for("InService", lambda: settled(sm, ep), timeout=30)
    assert ready["EndpointStatus"] == "InService"
    assert [(v["VariantName"], v["CurrentWeight"]) for v in ready["ProductionVariants"]] == [
        ("main", 1.0)
    ]

    answer = runtime.invoke_endpoint(
        EndpointName=ep,
        Body=predict_body(ROWS),
        ContentType="application/json",
        Accept="application/json",
    )
    assert answer["ContentType"] == "application/json"
    assert answer["InvokedProductionVariant"] == "main"
    assert json.loads(answer["Body"].read()) == {
        "model_name": ep,
        "outputs": [{"name": "predict", "shape": [3], "datatype": "INT64", "data": RULE_ANSWER}],
    }

    sm.update_endpoint(EndpointName=ep, EndpointConfigName=two)
    updating = endpoint_status(sm, ep)
    assert updating["EndpointStatus"] == "Updating"
    assert updating["EndpointConfigName"] == one
    assert updating["PendingDeploymentSummary"]["EndpointConfigName"] == two
    # Still serving, on the old config.
    assert (
        runtime.invoke_endpoint(EndpointName=ep, Body=predict_body(ROWS))[
            "InvokedProductionVariant"
        ]
        == "main"
    )

    updated = wait_for("InService again", lambda: settled(sm, ep), timeout=30)
    assert updated["EndpointConfigName"] == two
    assert "FailureReason" not in updated
    assert "PendingDeploymentSummary" not in updated
    assert [
        (v["VariantName"], v["CurrentWeight"], v["DesiredWeight"])
        for v in updated["ProductionVariants"]
    ] == [
        ("main", 90.0, 90.0),
        ("canary", 10.0, 10.0),
    ]
    canary = runtime.invoke_endpoint(
        EndpointName=ep, Body=predict_body(ROWS[:1]), TargetVariant="canary"
    )
    assert canary["InvokedProductionVariant"] == "canary"
    assert json.loads(canary["Body"].read())["outputs"][0]["data"] == RULE_ANSWER[:1]

    sm.delete_endpoint(EndpointName=ep)
    code, message = error_of(lambda: endpoint_status(sm, ep))
    assert (code, message.startswith("Could not find endpoint")) == ("ValidationException", True)
    sm.delete_endpoint_config(EndpointConfigName=one)
    sm.delete_endpoint_config(EndpointConfigName=two)
    sm.delete_model(ModelName=model)


def test_endpoint_failures(sm, model_uri):
    good, missing, failing = unique("good"), unique("missing"), unique("failing")
    create_model(sm, good, model_uri)
    create_model(sm, missing, f"s3://{BUCKET}/output/{unique('never')}/model.tar.gz")
    create_model(sm, failing, model_uri, env={"MLGW_TEST_OUTCOME": "Failed"})
    quick = [{"Key": "mlgw-test:duration-ms", "Value": "300"}]

    for model, words in (
        (missing, "Failed to download model data"),
        (failing, "MLGW_TEST_OUTCOME=Failed"),
    ):
        config, ep = unique("c"), unique("e")
        create_config(sm, config, [("main", model, 1.0)])
        sm.create_endpoint(EndpointName=ep, EndpointConfigName=config, Tags=quick)
        done = wait_for("the endpoint to settle", lambda: settled(sm, ep))  # noqa: B023
        assert done["EndpointStatus"] == "Failed"
        assert words in done["FailureReason"]

    config, ep = unique("c"), unique("e")
    create_config(sm, config, [("main", good, 1.0)])
    sm.create_endpoint(
        EndpointName=ep,
        EndpointConfigName=config,
        Tags=[*quick, {"Key": "mlgw-test:outcome", "Value": "Failed"}],
    )
    done = wait_for("the endpoint to settle", lambda: settled(sm, ep))
    assert done["EndpointStatus"] == "Failed"
    assert "mlgw-test:outcome=Failed" in done["FailureReason"]

    # An update to a config that cannot serve rolls back.
    ok, bad, ep = unique("ok"), unique("bad"), unique("e")
    create_config(sm, ok, [("main", good, 1.0)])
    create_config(sm, bad, [("main", missing, 1.0)])
    sm.create_endpoint(EndpointName=ep, EndpointConfigName=ok, Tags=quick)
    wait_for("InService", lambda: settled(sm, ep))
    sm.update_endpoint(EndpointName=ep, EndpointConfigName=bad)
    back = wait_for("the update to end", lambda: settled(sm, ep))
    assert back["EndpointStatus"] == "InService"
    assert back["EndpointConfigName"] == ok
    assert "rolled back" in back["FailureReason"]


def test_invoke_errors(sm, runtime, model_uri):
    code, message = error_of(
        lambda: runtime.invoke_endpoint(EndpointName=unique("none"), Body="{}")
    )
    assert code == "ValidationError"
    assert "not found" in message
    model, config, ep = unique("m"), unique("c"), unique("e")
    create_model(sm, model, model_uri)
    create_config(sm, config, [("main", model, 1.0)])
    sm.create_endpoint(
        EndpointName=ep,
        EndpointConfigName=config,
        Tags=[{"Key": "mlgw-test:duration-ms", "Value": "200"}],
    )
    wait_for("InService", lambda: settled(sm, ep))
    with pytest.raises(ClientError) as e:
        runtime.invoke_endpoint(EndpointName=ep, Body='{"rows": [1, 2]}')
    assert e.value.response["Error"]["Code"] == "ModelError"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert "not an Open Inference Protocol V2 request" in e.value.response["Error"]["Message"]
    code, _ = error_of(
        lambda: runtime.invoke_endpoint(
            EndpointName=ep, Body=predict_body(ROWS), TargetVariant="nope"
        )
    )
    assert code == "ValidationError"


def test_refused_access_key(endpoint):
    bad = client(endpoint, "sagemaker", key="MLGWTESTREFUSED")
    code, message = error_of(lambda: bad.list_training_jobs(MaxResults=1))
    assert code == "UnrecognizedClientException"
    assert "security token" in message
    code, _ = error_of(lambda: client(endpoint, "s3", key="MLGWTESTREFUSED").list_buckets())
    assert code == "InvalidAccessKeyId"
