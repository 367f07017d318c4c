"""The gateway's Open Inference Protocol gRPC service through a client nobody here wrote:
tritonclient from PyPI, pointed at the gateway with the endpoint's name as the model name,
against a real MLServer on the local target."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton
from conftest import Gateway
from tritonclient.utils import InferenceServerException

import mlgw

pytestmark = pytest.mark.integration

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def infer(c: triton.InferenceServerClient, model: str, x: np.ndarray) -> np.ndarray:
    inp = triton.InferInput("input-0", list(x.shape), "FP64" if x.dtype == np.float64 else "FP32")
    inp.set_data_from_numpy(x)
    out = c.infer(model, [inp]).as_numpy("predict")
    assert out is not None, "no output named predict"
    return out


def test_tritonclient_reaches_an_endpoint_through_the_gateway(
    client: mlgw.Client,
    gateway: Gateway,
    trained: mlgw.Job,
    cleanup: list[mlgw.Job | mlgw.Endpoint],
) -> None:
    triton_client = triton.InferenceServerClient(gateway.address)
    assert triton_client.is_server_live() and triton_client.is_server_ready()

    with pytest.raises(InferenceServerException) as e:
        triton_client.is_model_ready("oip-iris")
    assert e.value.status() == "StatusCode.NOT_FOUND"

    ep = client.deploy(trained.output_uri, model_format="sklearn", name="oip-iris")
    cleanup.append(ep)
    assert not triton_client.is_model_ready("oip-iris")
    ep.wait_ready(timeout=180)
    assert triton_client.is_model_ready("oip-iris")

    want = ep.predict(ROWS)
    for x in (np.array(ROWS), np.array(ROWS, dtype=np.float32)):
        got = infer(triton_client, "oip-iris", x)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tolist() == want.tolist()

    meta = triton_client.get_model_metadata("oip-iris", as_json=True)
    assert meta["name"] == "oip-iris" and meta["platform"] == "local"

    # A tensor whose shape does not match its data is refused by the gateway, naming it.
    bad = triton.InferInput("input-0", [2, 4], "FP64")
    bad.set_data_from_numpy(np.zeros((2, 4)))
    bad.set_shape([3, 4])
    with pytest.raises(InferenceServerException) as e:
        triton_client.infer("oip-iris", [bad])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "inputs[0].shape" in e.value.message()

    with pytest.raises(InferenceServerException) as e:
        infer(triton_client, "no-such-model", np.array(ROWS))
    assert e.value.status() == "StatusCode.NOT_FOUND"

    ep.delete()
    with pytest.raises(InferenceServerException) as e:
        triton_client.is_model_ready("oip-iris")
    assert e.value.status() == "StatusCode.NOT_FOUND"
    triton_client.close()
