"""One AWS API call against the AWS test server, for tests that read back what happened there
(the Rust tests call it through `mlgw_tests::aws::call`, which keeps their build free of the
heavy AWS SDK crates for SageMaker and CloudWatch).

    readback.py [--endpoint URL] <service> <Operation> [request-json]

- service: a boto3 client name: sagemaker, sagemaker-runtime, logs, s3, ...
- Operation: the AWS name (DescribeTrainingJob) or boto3's (describe_training_job)
- request-json: the operation's parameters as a JSON object (default {})

The endpoint is --endpoint, else $MLGW_TEST_AWS_ENDPOINT. Credentials are $AWS_ACCESS_KEY_ID and
$AWS_SECRET_ACCESS_KEY, else the tests' values; nothing is read from ~/.aws. No retries.

Prints the response as one JSON object, without ResponseMetadata: timestamps as ISO 8601 in UTC,
a streamed body (S3 GetObject's, InvokeEndpoint's) as its text, or as base64 under
`<key>Base64` when it is not UTF-8. Exit status 0. An error answered by AWS: exit status 3 and
{"Error": {"Code": ..., "Message": ...}, "HTTPStatusCode": ...} on stdout. Anything else (no
server, a bad argument): exit status 1, the reason on stderr.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from datetime import datetime, timezone

# Before boto3 loads: only what this script is given counts, never this machine's AWS setup.
os.environ["AWS_CONFIG_FILE"] = "/nonexistent/mlgw-test/config"
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent/mlgw-test/credentials"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.response import StreamingBody

# The values tests/src/moto.rs uses: moto takes any credentials.
ACCESS_KEY_ID = "S3RVER"
SECRET_ACCESS_KEY = "S3RVER"
REGION = "us-east-1"


def plain(value, key=""):
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if isinstance(v, StreamingBody):
                data = v.read()
                try:
                    out[k] = data.decode("utf-8")
                except UnicodeDecodeError:
                    out[f"{k}Base64"] = base64.b64encode(data).decode()
            else:
                out[k] = plain(v, k)
        return out
    if isinstance(value, list):
        return [plain(v, key) for v in value]
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def client(service: str, endpoint: str):
    return boto3.session.Session().client(
        service,
        endpoint_url=endpoint,
        region_name=os.environ.get("AWS_REGION", REGION),
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        config=Config(
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            s3={"addressing_style": "path"},
        ),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", default=os.environ.get("MLGW_TEST_AWS_ENDPOINT"))
    ap.add_argument("service")
    ap.add_argument("operation")
    ap.add_argument("request", nargs="?", default="{}")
    args = ap.parse_args()
    if not args.endpoint:
        ap.error("no endpoint: give --endpoint or set MLGW_TEST_AWS_ENDPOINT")
    request = json.loads(args.request)
    if not isinstance(request, dict):
        ap.error("request-json must be a JSON object")
    c = client(args.service, args.endpoint)
    method = botocore.xform_name(args.operation)
    if method not in c.meta.method_to_api_mapping:
        ap.error(f"{args.service} has no operation {args.operation}")
    try:
        response = getattr(c, method)(**request)
    except ClientError as e:
        print(
            json.dumps(
                {
                    "Error": {
                        "Code": e.response.get("Error", {}).get("Code", ""),
                        "Message": e.response.get("Error", {}).get("Message", ""),
                    },
                    "HTTPStatusCode": e.response.get("ResponseMetadata", {}).get(
                        "HTTPStatusCode", 0
                    ),
                }
            )
        )
        return 3
    response.pop("ResponseMetadata", None)
    print(json.dumps(plain(response)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
