"""mlgw: train, deploy and predict on any target through one API.

>>> import mlgw
>>> client = mlgw.Client()                 # $MLGW_SERVER, else localhost:50051
>>> job = client.train(["python", "train.py"], code="./src", hyperparameters={"C": 0.5})
>>> job.wait()                             # progress display; raises JobFailed on failure
>>> ep = client.deploy(job, model_format="sklearn", name="iris").wait_ready()
>>> ep.predict([[5.1, 3.5, 1.4, 0.2]])     # numpy, pandas or lists in; numpy out

``code=`` packs and uploads the directory (``.gitignore``/``.mlgwignore`` honoured) and the
command runs in it on whichever target runs the job; ``client.upload()`` stores any file or
directory in the gateway's artifact store. Change ``target=`` (see ``client.targets()``) to
run the same code elsewhere.
"""

from .artifacts import Artifact, ArtifactKind, ArtifactList
from .client import DEFAULT_ADDRESS, Client
from .endpoint import Endpoint, EndpointList, EndpointState
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
    Unauthenticated,
    Unavailable,
    Unsupported,
)
from .job import Job, JobChange, JobList, JobState, LogLine
from .target import FEATURES, Target, TargetList

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ADDRESS",
    "FEATURES",
    "AlreadyExists",
    "Artifact",
    "ArtifactKind",
    "ArtifactList",
    "Client",
    "Endpoint",
    "EndpointFailed",
    "EndpointList",
    "EndpointState",
    "FailedPrecondition",
    "InvalidSpec",
    "Job",
    "JobCancelled",
    "JobChange",
    "JobFailed",
    "JobList",
    "JobState",
    "LogLine",
    "MlgwError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Target",
    "TargetList",
    "Timeout",
    "Unauthenticated",
    "Unavailable",
    "Unsupported",
]
