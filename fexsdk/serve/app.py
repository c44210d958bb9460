"""The service on Ray Serve: the application (``fexsdk.serve:build_app`` in ``serve.yaml``) and ``fex serve``'s
local run (:func:`run_local`). Ray is imported here only when these run."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional


from fexsdk._extras import require
from fexsdk.serve.auth import check_exposure, is_loopback
from fexsdk.serve.options import ServeOptions
from fexsdk.serve.service import FexService

DEFAULT_PORT = 8000
APP_NAME = "fexsdk"


def build_app(args: Optional[Mapping[str, Any]] = None):
    """The Serve application builder: ``import_path: fexsdk.serve:build_app`` in ``serve.yaml`` (or
    ``serve run fexsdk.serve:build_app max_batch_size=32``). ``args`` are :class:`ServeOptions` fields;
    replicas, GPUs and autoscaling are the deployment's options under ``deployments:``.
    """
    return make_app(args)


def make_app(args: Optional[Mapping[str, Any]] = None, *, num_replicas: Optional[int] = None,
             ray_actor_options: Optional[dict] = None, max_ongoing_requests: Optional[int] = None):
    """The Serve application with its deployment options given here (for ``fex serve``, tests, benchmarks)."""
    serve = require("ray.serve", "serve", "fexsdk's HTTP service")
    opts = ServeOptions.from_args(args)
    options: dict[str, Any] = {"name": "FexService",
                               # enough requests in flight for a batch to fill (each has one face or more)
                               "max_ongoing_requests": max_ongoing_requests or 2 * int(opts.workers)}
    if num_replicas is not None:
        options["num_replicas"] = num_replicas
    if ray_actor_options is not None:
        options["ray_actor_options"] = ray_actor_options
    elif opts.transfer.device.startswith("cuda"):
        options["ray_actor_options"] = {"num_gpus": 1}
    return serve.deployment(FexService).options(**options).bind(asdict(opts))


def check_port_free(host: str, port: int) -> None:
    """ValueError when something already listens on ``host:port``. Ray's proxy binds with SO_REUSEPORT, so a
    second ``fex serve`` on the port would start too and the two would split the requests between them."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a recently closed server's TIME_WAIT is fine
        try:
            sock.bind((host, int(port)))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ValueError(f"port {port} on {host} is already in use (another fex serve, or another "
                                 "server): stop it or pick another --port") from None
            raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def deploy_failure_reason(serve) -> str:
    """Why the fexsdk application failed to deploy, from Ray Serve's status ('' when it does not say)."""
    try:
        app = serve.status().applications.get(APP_NAME)
    except Exception:  # the controller may already be gone
        return ""
    if app is None:
        return ""
    messages = [d.message for d in app.deployments.values() if getattr(d, "message", "")]
    text = "\n".join(messages) or getattr(app, "message", "")
    # The replica's traceback ends with the exception the constructor raised: that line is the reason.
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line)]
    return errors[-1] if errors else (lines[-1] if lines else "")


def check_model(model: Optional[str]) -> None:
    """Refuse a model the replicas could not open, before Ray starts: a bundled name that does not exist, a
    missing file, or a truncated or foreign one (said now, not after a 15 s failed deploy)."""
    if not model:
        return
    from fexsdk.metadata import read_metadata
    from fexsdk.transfer import resolve_model

    path = Path(resolve_model(model))  # a bundled model's name ("warp") becomes its file
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {model}")
    read_metadata(path)


def run_local(args: Mapping[str, Any], *, replicas: int = 1, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
              num_cpus: Optional[int] = None, blocking: bool = True, no_auth: bool = False) -> str:
    """Start Ray locally, deploy the app and return its URL (``fex serve``); with ``blocking`` wait for Ctrl-C.

    A ``host`` other than a loopback address needs ``args["token"]``, or ``no_auth=True`` said explicitly.
    """
    opts = ServeOptions.from_args(args)
    check_exposure(host, opts.token, no_auth)
    ray = require("ray", "serve", "fex serve")
    serve = require("ray.serve", "serve", "fex serve")
    check_model(opts.transfer.model)
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    check_port_free(host, port)
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    gpus = float(ray.cluster_resources().get("GPU", 0))
    device = opts.transfer.device
    if device.startswith("cuda") and gpus == 0:
        raise RuntimeError("--device cuda, but Ray sees no GPU on this machine")
    # A replica sees a GPU only if it asks for one (Ray hides the others): "cuda" takes a whole GPU each,
    # "auto" shares what there is. On a CPU a replica reserves no whole core: several share the machine.
    if device.startswith("cuda"):
        actor_options: dict = {"num_gpus": 1}
    elif device == "auto" and gpus > 0:
        actor_options = {"num_gpus": min(1.0, gpus / replicas), "num_cpus": 0}
    else:
        actor_options = {"num_cpus": 0}
    serve.start(http_options={"host": host, "port": int(port)})
    try:
        serve.run(make_app(asdict(opts), num_replicas=replicas, ray_actor_options=actor_options),
                  name=APP_NAME, route_prefix="/", blocking=False)
    except RuntimeError as exc:  # "Deploying application fexsdk failed": the reason is in the app's status
        reason = deploy_failure_reason(serve) or str(exc)
        serve.shutdown()
        ray.shutdown()
        raise RuntimeError(f"the service did not start: {reason}") from None
    url = f"http://{host}:{port}"
    if blocking:
        import signal
        import time

        def _stop(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _stop)

        print(f"fexsdk serving on {url} ({replicas} replica(s), max batch {opts.max_batch_size} faces); "
              f"the page: {url}/{'?token=<your token>' if opts.token else ''}; POST {url}/apply; Ctrl-C stops"
              + ("; every route needs the token" if opts.token else
                 "; NO AUTH: anyone who reaches this address can use it" if not is_loopback(host) else ""),
              flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            serve.shutdown()
            ray.shutdown()
    return url

