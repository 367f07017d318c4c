"""The example notebook runs top to bottom against the real gateway, so it cannot rot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from conftest import Gateway
from nbclient import NotebookClient

import mlgw

pytestmark = pytest.mark.integration

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"


def test_the_checked_in_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_example_notebook_runs(
    gateway: Gateway, tmp_path: Path, cleanup: list[mlgw.Job | mlgw.Endpoint]
) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = {
        **os.environ,
        "MLGW_SERVER": gateway.address,
        "MLGW_PYTHON": gateway.python,
        "MLGW_TARGET": "local",
    }
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute(env=env)
    finally:
        # Keep the executed notebook for a failure's post-mortem.
        nbformat.write(nb, tmp_path / "executed.ipynb")
        # What a notebook that stopped half-way left running.
        with mlgw.Client(gateway.address) as c:
            cleanup.extend(j for j in c.jobs() if j.name == "iris" and not j.done)
            cleanup.extend(e for e in c.endpoints() if e.name == "quickstart-iris")

    def text(cell: nbformat.NotebookNode) -> str:
        parts = []
        for o in cell.get("outputs", []):
            parts.append(o.get("text", ""))
            parts.extend(str(v) for v in o.get("data", {}).values())
        return "\n".join(parts)

    outputs = "\n".join(text(c) for c in nb.cells if c.cell_type == "code")
    assert "epoch 0: warming up" in outputs and "training accuracy" in outputs
    assert "['setosa', 'virginica']" in outputs
    assert "not configured here:" in outputs and "unsupported:" in outputs
    # The code went with the job as an artifact, the script named relative to it.
    with mlgw.Client(gateway.address) as c:
        job = next(j for j in c.jobs() if j.name == "iris")  # the newest
        assert job.state == "succeeded" and job.command[1:] == ["train.py"], job
        code = c.artifact(job.code_uri)
        assert code.kind == "directory" and code.name == "iris_src"
    # Rich display: the job, endpoint and lists rendered as HTML tables.
    html = [
        o["data"]["text/html"]
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "text/html" in o.get("data", {})
    ]
    assert any("Job j-" in h or "<table" in h for h in html), json.dumps(html)[:500]
    assert any("quickstart-iris" in h for h in html)
