"""mlgw: train, deploy and predict on any target through one API.

>>> import mlgw
>>> client = mlgw.Client()                     # $MLGW_SERVER, else localhost:50051
>>> job = client.train(["python", "/abs/train.py"], hyperparameters={"C": 0.5})
>>> job.wait()
>>> ep = client.deploy(job.output_uri, model_format="sklearn", name="iris").wait_ready()
>>> ep.predict([[5.1, 3.5, 1.4, 0.2]])
"""

from .client import Client, Endpoint, EndpointList, Job, JobList, Target, TargetList
from .errors import (
    AlreadyExists,
    EndpointFailed,
    FailedPrecondition,
    InvalidSpec,
    JobCancelled,
    JobFailed,
    MlgwError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Timeout,
    Unavailable,
    Unsupported,
)

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "Client",
    "Endpoint",
    "EndpointFailed",
    "EndpointList",
    "FailedPrecondition",
    "InvalidSpec",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobList",
    "MlgwError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Target",
    "TargetList",
    "Timeout",
    "Unavailable",
    "Unsupported",
]
