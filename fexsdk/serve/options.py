"""What one deployment of the service is configured with: :class:`ServeOptions` (``serve.yaml``'s ``args``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional


from fexsdk.options import TransferOptions
from fexsdk.serve.auth import check_token


@dataclass
class ServeOptions:
    """What one deployment is configured with (the ``args`` of ``serve.yaml``).

    ``max_batch_size`` counts faces per generator call (1 switches batching across requests
    off: each request's faces then go through the generator by themselves, as in
    ``Transfer.apply``); ``batch_wait_s`` is how long the first face of a batch waits for more.
    """

    #: The model, device, detector, blend and threads of every replica's Transfer. In ``serve.yaml``'s ``args``
    #: its fields are given flat (``model: ...``, ``device: cuda``) or as a ``transfer:`` mapping.
    transfer: TransferOptions = field(default_factory=TransferOptions)
    max_batch_size: int = 16
    batch_wait_s: float = 0.005
    #: Worker threads per replica (detection and paste-back run there, in parallel; a request waiting
    #: for its batch holds one). None: max(4, max_batch_size), so that one-face requests can fill a batch.
    workers: Optional[int] = None
    max_body_bytes: int = 20_000_000
    max_pixels: int = 40_000_000
    max_crops: int = 1024
    jpeg_quality: int = 95
    #: Every route needs this token when set (see the module's docstring); None: no auth.
    token: Optional[str] = field(default=None, repr=False)
    #: The page's live channel (POST /live), per client address: frames a second, and pixels and bytes a frame.
    live_max_fps: float = 30.0
    live_max_pixels: int = 1280 * 720
    live_max_bytes: int = 2_000_000

    @classmethod
    def from_args(cls, args: Optional[Mapping[str, Any]]) -> "ServeOptions":
        args = dict(args or {})
        flat = {k: args.pop(k) for k in TransferOptions.fields() if k in args}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"unknown fexsdk serve option(s) {unknown}; known: {sorted(known | set(flat))}")
        transfer = TransferOptions.from_mapping(args.pop("transfer", None))
        opts = cls(transfer=transfer.replace(**flat).validate() if flat else transfer.validate(), **args)
        if int(opts.max_batch_size) < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {opts.max_batch_size}")
        if not float(opts.batch_wait_s) >= 0:
            raise ValueError(f"batch_wait_s must be >= 0, got {opts.batch_wait_s}")
        if opts.workers is None:
            opts.workers = max(4, min(int(opts.max_batch_size), 64))
        if int(opts.workers) < 1:
            raise ValueError(f"workers must be >= 1, got {opts.workers}")
        if opts.token is not None:
            check_token(opts.token)
        if not float(opts.live_max_fps) > 0:
            raise ValueError(f"live_max_fps must be > 0, got {opts.live_max_fps}")
        if int(opts.live_max_pixels) < 1 or int(opts.live_max_bytes) < 1:
            raise ValueError("live_max_pixels and live_max_bytes must be >= 1")
        return opts
