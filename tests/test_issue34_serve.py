"""Issue 34: `fex serve` refuses a port that is already served, and says why a model cannot be served.

Both checks run before Ray starts, so these tests start no Ray cluster; the reason of a failed
deploy (which needs Ray) is read from Serve's status by :func:`fexsdk.serve.deploy_failure_reason`,
checked here on a status of the shape Ray Serve returns.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from fexsdk.cli import main
from tests.conftest import REPO

pytest.importorskip("ray.serve")


def test_port_in_use_is_refused_before_ray_starts(capsys):
    import ray

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = main(["serve", "--port", str(port)])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"port {port} on 127.0.0.1 is already in use" in err
    assert not ray.is_initialized()


def test_truncated_model_is_refused_with_its_reason(tmp_path, capsys):
    import ray

    data = (REPO / "fexsdk" / "models" / "default.onnx").read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    rc = main(["serve", "--model", str(bad), "--port", "8031"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "truncated.onnx is not a readable ONNX model (DecodeError)" in err
    assert not ray.is_initialized()


def test_deploy_failure_reason_is_the_replicas_exception():
    from fexsdk.serve import APP_NAME, deploy_failure_reason

    message = ("The deployment failed to start 3 times in a row. This may be due to a problem with its constructor "
               "or initial health check failing. See controller logs for details. Error:\n"
               "ray::ServeReplica:fexsdk:FexService.initialize_and_get_metadata() (pid=1, ip=127.0.0.1)\n"
               "  File \"/x/fexsdk/backends.py\", line 70, in __init__\n"
               "ValueError: m.onnx: its metadata says input 'image' is (batch, 1, 64, 64)\n")
    deployment = SimpleNamespace(status="DEPLOY_FAILED", message=message)
    app = SimpleNamespace(status="DEPLOY_FAILED", message="", deployments={"FexService": deployment})
    fake_serve = SimpleNamespace(status=lambda: SimpleNamespace(applications={APP_NAME: app}))
    assert deploy_failure_reason(fake_serve) == "ValueError: m.onnx: its metadata says input 'image' is (batch, 1, 64, 64)"
    assert deploy_failure_reason(SimpleNamespace(status=lambda: SimpleNamespace(applications={}))) == ""
