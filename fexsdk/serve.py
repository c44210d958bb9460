"""``fex serve``: fexsdk behind an HTTP service on Ray Serve, batching faces across requests.

Endpoints (one deployment, :class:`FexService`; each replica owns one :class:`~fexsdk.transfer.Transfer`):

- ``POST /apply``: an image (the raw JPEG/PNG bytes as the body, or multipart with an ``image`` file)
  and ``emotion`` (a name, an alias or intensities such as ``happy=0.7,surprise=0.3``), optional
  ``strength``, ``seed`` and ``faces`` (JSON ``[[x, y, w, h], ...]``), as query parameters or
  multipart fields. Returns the image in the request's format; the faces in the ``X-Faces``
  header (JSON boxes) and their number in ``X-Face-Count``.
- ``POST /apply.json``: the same, answered as JSON (``image`` base64, ``format``, ``faces``); it
  also takes a JSON body ``{"image": "<base64>", "emotion": ..., ...}``.
- ``POST /generate``: ready crops of the model's size (48x48 gray for the bundled model) as an
  ``.npy`` array (N, 48, 48) or (N, 1, 48, 48) uint8, or as a PNG (one crop, or N crops side by
  side), with ``emotion`` (one target for all) or ``targets`` (a JSON list, one per crop) and
  ``seed``. Returns the outputs in the same format.
- ``GET /healthz``, ``GET /model`` (the model's metadata and card), ``GET /stats`` (this
  replica's counters, among them the largest generator batch), ``GET /models`` (the models a request's
  ``model`` field may name: the served one and the bundled ones).
- ``GET /``: the page (fexsdk/web: photo mode, live webcam mode, model picker), and its ``/app.js`` and
  ``/style.css``.
- ``POST /live``: one webcam frame (JPEG or PNG body) for the page's live mode, answered like ``/apply``
  (plus ``X-Server-Ms``); each client (by address) is held to ``live_max_fps`` frames a second and
  ``live_max_pixels`` / ``live_max_bytes`` per frame (429 / 413 beyond them).

Auth: with a ``token`` every route (the page, its files, the API and ``/live``) needs it: an
``Authorization: Bearer <token>`` header, a ``token`` query parameter, or the ``fex_token`` cookie that the
page's first load with ``?token=`` sets (HttpOnly, SameSite=Strict); anything else gets 401.
:func:`run_local` refuses a non-loopback host without a token unless ``no_auth`` is given.

Batching: Transfer does everything but the generator call in a worker thread, exactly as
``Transfer.apply`` does (same detector, crops, per-face noise drawn from the seed, paste-back);
the generator call of every request is split into faces that a ``@serve.batch`` queue runs
together with the faces of concurrent requests, and hands back row by row. Each face keeps the
noise its own request drew, so a seed gives the same output, batched or alone.

Nothing here imports torch, and nothing is written to disk: requests are parsed in memory.
Ray itself is imported only by :func:`build_app`, :func:`run_local` and the replica, so the
request-handling code can be used (and tested) without it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import ipaddress
import json
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from fexsdk._extras import require
from fexsdk.backends import Backend
from fexsdk.options import TransferOptions
# Image formats accepted and answered, by their first bytes. The header reader is shared with `fex apply`
# (fexsdk.images), so a huge image is refused before decoding in both.
from fexsdk.images import JPEG_MAGIC, PNG_MAGIC, image_dimensions  # noqa: F401  (image_dimensions re-exported)

NPY_MAGIC = b"\x93NUMPY"
DEFAULT_PORT = 8000
APP_NAME = "fexsdk"


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


MIN_TOKEN_LENGTH = 8
TOKEN_COOKIE = "fex_token"


def check_token(token: str) -> None:
    """A token must be at least 8 printable ASCII characters without spaces (it travels in a header, a query
    string and a cookie); ValueError otherwise."""
    if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"the token must be at least {MIN_TOKEN_LENGTH} characters long")
    if not all(33 <= ord(c) <= 126 for c in token) or any(c in token for c in ';,"\\'):
        raise ValueError("the token may hold printable ASCII characters only: no spaces, quotes, commas, "
                         "semicolons or backslashes")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    host = (host or "").strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: Optional[str], no_auth: bool = False) -> None:
    """Refuse to listen on a non-loopback address without a token, unless ``no_auth`` says so explicitly."""
    if token and no_auth:
        raise ValueError("--no-auth and a token (--token or FEX_TOKEN) contradict each other: give one of them")
    if token or no_auth or is_loopback(host):
        return
    raise ValueError(f"--host {host} is not a loopback address: anyone who reaches it could use the service. "
                     "Give a token (--token T or the FEX_TOKEN environment variable), or --no-auth to serve "
                     "without one")


class RateLimiter:
    """Per-client token buckets: ``rate`` requests a second, bursts of up to ``burst`` (default: one second's)."""

    def __init__(self, rate: float, burst: Optional[float] = None, max_clients: int = 4096) -> None:
        self.rate = float(rate)
        self.burst = max(1.0, float(burst if burst is not None else rate))
        self.max_clients = int(max_clients)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, key: str, now: Optional[float] = None) -> float:
        """0.0 when the request may go (and it is counted), else the seconds until it could."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
            if len(self._buckets) >= self.max_clients and key not in self._buckets:
                full = now - self.burst / self.rate  # clients whose bucket has refilled are as good as new
                self._buckets = {k: v for k, v in self._buckets.items() if v[1] > full}
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


#: The page and its files (fexsdk/web), by path.
STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/index.html": ("index.html", "text/html; charset=utf-8"),
                "/app.js": ("app.js", "text/javascript; charset=utf-8"),
                "/style.css": ("style.css", "text/css; charset=utf-8")}
#: The page loads nothing from elsewhere, and no other site may frame it.
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; "
            "script-src 'self'; style-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'none'")


class HTTPError(Exception):
    """A request the service refuses: an HTTP status and a message naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Reply:
    status: int
    body: bytes
    media_type: str
    headers: dict[str, str]


def _json_reply(obj: Any, status: int = 200, headers: Optional[dict[str, str]] = None) -> Reply:
    return Reply(status, json.dumps(obj).encode("utf-8"), "application/json", dict(headers or {}))


def _error_reply(status: int, message: str) -> Reply:
    return _json_reply({"error": message, "status": status}, status)


# -- parsing requests ---------------------------------------------------------
def parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """The fields of a ``multipart/form-data`` body, in memory: {name: bytes} (the first of each name)."""
    boundary = None
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        raise HTTPError(400, "multipart body without a boundary in its Content-Type")
    delim = b"--" + boundary.encode("latin-1")
    fields: dict[str, bytes] = {}
    for chunk in body.split(delim)[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        if chunk.startswith(b"\r\n"):
            chunk = chunk[2:]
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise HTTPError(400, "malformed multipart body: a part has no blank line after its headers")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        name = None
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-disposition":
                for param in value.split(";")[1:]:
                    k, _, v = param.strip().partition("=")
                    if k.strip().lower() == "name":
                        name = v.strip().strip('"')
        if name is not None and name not in fields:
            fields[name] = content
    return fields


def image_format(data: bytes) -> str:
    """'png' or 'jpeg' from the first bytes; HTTPError 415 otherwise."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    raise HTTPError(415, "undecodable image: the body is neither JPEG nor PNG (send the file's bytes, or multipart "
                         "with an 'image' file)")


def decode_image(data: bytes, max_pixels: int) -> tuple[np.ndarray, str]:
    """JPEG/PNG bytes -> (uint8 gray/BGR/BGRA array, format), refusing images over ``max_pixels`` before decoding."""
    import cv2

    if not data:
        raise HTTPError(400, "no image: the request has an empty body (send a JPEG or PNG)")
    fmt = image_format(data)
    dims = image_dimensions(data)
    if dims is not None and dims[0] * dims[1] > max_pixels:
        raise HTTPError(413, f"image too large: {dims[0]}x{dims[1]} is {dims[0] * dims[1]:,} pixels; "
                             f"the limit is {max_pixels:,}")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise HTTPError(400, f"undecodable image: the {fmt.upper()} data is corrupt or truncated")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise HTTPError(413, f"image too large: {image.shape[1]}x{image.shape[0]} is {image.shape[0] * image.shape[1]:,} "
                             f"pixels; the limit is {max_pixels:,}")
    if image.dtype == np.uint16:  # 16-bit PNG: the runtime works on 8 bits
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise HTTPError(400, f"undecodable image: unsupported sample type {image.dtype}")
    return image, fmt


def encode_image(image: np.ndarray, fmt: str, jpeg_quality: int = 95) -> bytes:
    import cv2

    if fmt == "png":
        ok, buf = cv2.imencode(".png", image)
    else:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    if not ok:
        raise RuntimeError(f"could not encode the result as {fmt}")
    return buf.tobytes()


def _parse_emotion(text: Optional[str]):
    """The ``emotion`` field, read as ``fex apply -e`` reads it (:func:`fexsdk.emotions.parse_target`); HTTPError 400."""
    from fexsdk.emotions import parse_target

    try:
        return parse_target(text)
    except ValueError as exc:
        raise HTTPError(400, str(exc)) from None


def _parse_seed(text: Optional[str]) -> Optional[int]:
    if text is None or str(text).strip() == "":
        return None
    try:
        seed = int(str(text).strip())
    except ValueError:
        raise HTTPError(400, f"bad seed {text!r}: expected an integer") from None
    if seed < 0:
        raise HTTPError(400, f"bad seed {seed}: expected an integer >= 0")
    return seed


def _parse_strength(text: Optional[str]) -> Optional[float]:
    if text is None or str(text).strip() == "":
        return None  # the model's default strength for the emotion
    try:
        value = float(str(text).strip())
    except ValueError:
        raise HTTPError(400, f"bad strength {text!r}: expected a number >= 0") from None
    if not np.isfinite(value) or value < 0:
        raise HTTPError(400, f"bad strength {text!r}: expected a finite number >= 0")
    return value


def _parse_faces(value: Any):
    """The ``faces`` field: JSON boxes ``[[x, y, w, h], ...]``, face indices ``[0, 2]`` (left to right, as
    ``Transfer.apply`` numbers them), ``"largest"``, or ``"all"`` / nothing (every face found)."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "all")):
        return None
    if isinstance(value, str) and value.strip() == "largest":
        return "largest"
    expected = 'expected JSON [[x, y, w, h], ...], face indices such as [0, 2] (left to right), "largest" or "all"'
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError:
            raise HTTPError(400, f"bad faces {value!r}: {expected}") from None
    if (isinstance(value, list) and value
            and all(isinstance(i, int) and not isinstance(i, bool) for i in value)):
        if any(i < 0 for i in value):
            raise HTTPError(400, f"bad faces {value!r}: face indices are >= 0 (0 is the leftmost face)")
        return value
    if not isinstance(value, list) or not all(
            isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)
            for b in value):
        raise HTTPError(400, f"bad faces {value!r}: {expected}")
    for b in value:
        if not (b[2] > 0 and b[3] > 0):
            raise HTTPError(400, f"bad faces: box {b} needs a positive width and height")
    return value


def _parse_targets(text: Optional[str]) -> Optional[list]:
    if text is None or not str(text).strip():
        return None
    try:
        items = json.loads(text)
    except ValueError:
        raise HTTPError(400, f"bad targets {text!r}: expected a JSON list, one target per crop") from None
    if not isinstance(items, list):
        raise HTTPError(400, f"bad targets {text!r}: expected a JSON list, one target per crop")
    out = []
    for item in items:
        if isinstance(item, dict):
            try:
                from fexsdk.emotions import target_vector

                target_vector(item)
            except ValueError as exc:
                raise HTTPError(400, f"bad intensities in targets: {exc}") from None
            out.append(item)
        elif isinstance(item, (str, int)) and not isinstance(item, bool):
            out.append(_parse_emotion(str(item)))
        else:
            raise HTTPError(400, f"bad target {item!r} in targets: expected a name, an index or {{name: intensity}}")
    return out


@dataclass
class ParsedRequest:
    data: bytes
    fields: dict[str, str]


def _text(value: bytes, name: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, f"field {name!r} is not UTF-8 text") from None


def parse_request(body: bytes, content_type: str, query: Mapping[str, str], file_field: str) -> ParsedRequest:
    """Split a request into its payload (``file_field`` of a multipart body, or the raw body) and its text fields.

    Text fields come from the query string, then multipart fields, then a JSON body's keys (the payload of a
    JSON body is base64 under ``file_field``).
    """
    fields = {k: v for k, v in query.items()}
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        parts = parse_multipart(body, content_type)
        data = parts.pop(file_field, b"")
        for k, v in parts.items():
            fields[k] = _text(v, k)
        return ParsedRequest(data, fields)
    if ctype == "application/json":
        try:
            obj = json.loads(body.decode("utf-8")) if body else {}
        except (UnicodeDecodeError, ValueError) as exc:
            raise HTTPError(400, f"the JSON body is not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise HTTPError(400, "the JSON body must be an object")
        raw = obj.pop(file_field, None)
        data = b""
        if raw is not None:
            if not isinstance(raw, str):
                raise HTTPError(400, f"{file_field!r} must be a base64 string")
            try:
                data = base64.b64decode(raw.split(",", 1)[-1] if raw.startswith("data:") else raw, validate=True)
            except (binascii.Error, ValueError):
                raise HTTPError(400, f"undecodable image: {file_field!r} is not valid base64") from None
        for k, v in obj.items():
            fields[k] = v if isinstance(v, str) else json.dumps(v)
        return ParsedRequest(data, fields)
    return ParsedRequest(body, fields)


# -- the generator, shared by the worker threads -----------------------------------------
class _SharedBackend(Backend):
    """The replica's one backend as its worker Transfers see it, with both of a backend's calls.

    Batching off (``submit`` None): each call goes to the backend as it is, counted for /stats. Batching on:
    each face (row) is sent to the replica's batch queue, and the call blocks until its outputs come back.
    """

    def __init__(self, inner: Backend, count, submit=None) -> None:
        self.inner = inner
        self.meta = inner.meta
        self.name = inner.name
        self._count = count
        self._submit = submit  # (image_row, label_row, noise_row) -> concurrent Future of {output name: row}

    def run_outputs(self, image, label, noise):
        if self._submit is None:
            self._count(image.shape[0])
            return self.inner.run_outputs(image, label, noise)
        futures = [self._submit(image[i], label[i], None if noise is None else noise[i]) for i in range(image.shape[0])]
        rows = [f.result() for f in futures]
        return {name: np.stack([r[name] for r in rows]) for name in self.meta.outputs}

    def run(self, image, label, noise):
        if self._submit is None:
            self._count(image.shape[0])
            return self.inner.run(image, label, noise)
        return self.run_outputs(image, label, noise)["output"]


class FexService:
    """The request handler of one replica: one Transfer, worker threads, and the batch queue.

    Usable without Ray through :meth:`handle` (``_use_serve_batch=False``: each request's faces go through the
    generator by themselves); Ray Serve wraps it as a deployment in :func:`make_app`, where ``__call__``
    answers Starlette requests.
    """

    def __init__(self, options: Optional[Mapping[str, Any]] = None, _use_serve_batch: bool = True) -> None:
        from fexsdk.transfer import Transfer, resolve_model

        self.opts = ServeOptions.from_args(options)
        o = self.opts
        self.transfer = Transfer.from_options(o.transfer)
        self.model_path = Path(resolve_model(o.transfer.model))
        self.meta = self.transfer.meta
        self.stats = {"requests": 0, "errors": 0, "faces": 0, "generator_calls": 0, "largest_batch": 0}
        self._stats_lock = threading.Lock()
        self._gen_lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._batched = None
        if _use_serve_batch and o.max_batch_size > 1:
            serve = require("ray.serve", "serve", "fexsdk's HTTP service")
            self._batched = serve.batch(max_batch_size=int(o.max_batch_size),
                                        batch_wait_timeout_s=float(o.batch_wait_s))(self._generate_batch)
        # The worker threads share one Transfer (each thread gets its own detector, as OpenCV's are not
        # thread-safe) whose backend is the replica's, wrapped so that the generator call is counted and,
        # with batching, goes through the batch queue.
        self._worker_transfer = self.transfer.clone(wrap=self._share_backend)
        self._workers = ThreadPoolExecutor(int(o.workers), thread_name_prefix="fex-worker")
        self._generator = ThreadPoolExecutor(1, thread_name_prefix="fex-generator")
        # The page's model picker: the served model, or a bundled one opened on first use (no batching across
        # requests for those; a Transfer may be shared by threads).
        from fexsdk.transfer import bundled_models

        if o.transfer.model is None:
            self.model_name = "default"
        elif str(o.transfer.model) in bundled_models():
            self.model_name = str(o.transfer.model)
        else:
            self.model_name = self.model_path.name
        self._others: dict[str, Any] = {}
        self._others_lock = threading.Lock()
        self._live_limit = RateLimiter(float(o.live_max_fps))
        self.stats.update({"live_frames": 0, "live_refused": 0, "unauthorized": 0})

    # -- batching --------------------------------------------------------------
    def _share_backend(self, inner: Backend) -> Backend:
        """The worker Transfer's backend: the replica's own (kept as :attr:`backend`, which the batch queue runs),
        wrapped to count its calls and, with batching, to send each face through the batch queue."""
        self.backend = inner
        return _SharedBackend(inner, self._count, self._submit if self._batched else None)

    def _count(self, n: int) -> None:
        with self._stats_lock:
            self.stats["generator_calls"] += 1
            self.stats["faces"] += n
            self.stats["largest_batch"] = max(self.stats["largest_batch"], n)

    def _submit(self, image_row, label_row, noise_row):
        if self._loop is None:
            raise RuntimeError("the batch queue has no event loop (call the service from its own loop)")
        return asyncio.run_coroutine_threadsafe(self._batched((image_row, label_row, noise_row)), self._loop)

    def _run_generator(self, image, label, noise):
        self._count(image.shape[0])
        return self.backend.run_outputs(image, label, noise)

    async def _generate_batch(self, items: list) -> list:
        """The faces of concurrent requests, one generator call; row i of every output goes back to item i."""
        image = np.stack([it[0] for it in items])
        label = np.stack([it[1] for it in items])
        noise = None if items[0][2] is None else np.stack([it[2] for it in items])
        loop = asyncio.get_running_loop()
        outs = await loop.run_in_executor(self._generator, self._run_generator, image, label, noise)
        return [{name: value[i] for name, value in outs.items()} for i in range(len(items))]

    async def _in_worker(self, fn, *args):
        self._loop = asyncio.get_running_loop()
        return await self._loop.run_in_executor(self._workers, fn, *args)

    # -- endpoints ---------------------------------------------------------------
    def model_info(self) -> dict:
        card = None
        card_path = self.model_path.with_suffix(".json")
        if card_path.is_file():
            try:
                card = json.loads(card_path.read_text())
            except (OSError, ValueError):
                card = None
        from fexsdk._version import __version__

        return {
            "model": self.model_path.name,
            "backend": self.backend.name,
            "detector": self.transfer.detector_name,
            "blend": self.transfer.blend,
            "fexsdk_version": __version__,
            "metadata": asdict(self.meta),
            "card": card,
            "batching": {"max_batch_size": self.opts.max_batch_size, "batch_wait_s": self.opts.batch_wait_s,
                         "across_requests": self._batched is not None},
            "limits": {"max_body_bytes": self.opts.max_body_bytes, "max_pixels": self.opts.max_pixels,
                       "max_crops": self.opts.max_crops, "live_max_fps": self.opts.live_max_fps,
                       "live_max_pixels": self.opts.live_max_pixels, "live_max_bytes": self.opts.live_max_bytes},
            "models": self.model_names(),
            "auth": bool(self.opts.token),
        }

    def model_names(self) -> list[str]:
        """What a request's ``model`` field may name: the served model first, then the other bundled ones."""
        from fexsdk.transfer import bundled_models

        return [self.model_name] + [m for m in bundled_models() if m != self.model_name]

    def _check_model_name(self, name: Optional[str]) -> Optional[str]:
        """None for the served model, else a bundled model's name; HTTPError 400 for any other."""
        if name is None or not str(name).strip() or str(name).strip() == self.model_name:
            return None
        name = str(name).strip()
        if name not in self.model_names():  # bundled names only: a request never names a file
            raise HTTPError(400, f"unknown model {name!r}; this service has: {', '.join(self.model_names())}")
        return name

    def _transfer_for(self, name: Optional[str]):
        if name is None:
            return self._worker_transfer
        with self._others_lock:
            tr = self._others.get(name)
            if tr is None:
                from fexsdk.transfer import Transfer

                tr = Transfer.from_options(self.opts.transfer.replace(model=name))
                self._others[name] = tr
            return tr

    def _apply_sync(self, image: np.ndarray, target, faces, seed, strength, model: Optional[str] = None):
        return self._transfer_for(model).apply(image, target, faces=faces, seed=seed, strength=strength,
                                               return_faces=True)

    def _generate_sync(self, crops: np.ndarray, targets, seed):
        return self._worker_transfer.generate(crops, targets, seed=seed)

    async def _apply(self, req: ParsedRequest, as_json: bool, max_pixels: Optional[int] = None) -> Reply:
        t0 = time.perf_counter()
        image, fmt = decode_image(req.data, max_pixels or self.opts.max_pixels)
        f = req.fields
        target = _parse_emotion(f.get("emotion"))
        seed = _parse_seed(f.get("seed"))
        strength = _parse_strength(f.get("strength"))
        faces = _parse_faces(f.get("faces"))
        model = self._check_model_name(f.get("model"))
        out, found = await self._in_worker(self._apply_sync, image, target, faces, seed, strength, model)
        boxes = [[round(float(v), 2) for v in face.box] for face in found]
        encoded = encode_image(out, fmt, self.opts.jpeg_quality)
        if max_pixels is not None:  # the live channel: the server's own time, for the page's latency split
            return Reply(200, encoded, "image/png" if fmt == "png" else "image/jpeg",
                         {"X-Faces": json.dumps(boxes), "X-Face-Count": str(len(found)),
                          "X-Server-Ms": f"{1000.0 * (time.perf_counter() - t0):.1f}", "Cache-Control": "no-store"})
        if as_json:
            return _json_reply({"format": fmt, "image": base64.b64encode(encoded).decode("ascii"),
                                "faces": [{"box": b, "score": round(float(face.score), 4)} for b, face in zip(boxes, found)]})
        return Reply(200, encoded, "image/png" if fmt == "png" else "image/jpeg",
                     {"X-Faces": json.dumps(boxes), "X-Face-Count": str(len(found))})

    def _read_crops(self, data: bytes) -> tuple[np.ndarray, str]:
        import cv2

        m = self.meta
        s = m.image_size
        if not data:
            raise HTTPError(400, f"no crops: send an .npy array (N, {s}, {s}) uint8 or a PNG of {s}x{s} crops side by side")
        if data.startswith(NPY_MAGIC):
            try:
                crops = np.load(io.BytesIO(data), allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise HTTPError(400, f"undecodable crops: not a valid .npy array ({exc})") from None
            fmt = "npy"
        elif data.startswith(PNG_MAGIC):
            dims = image_dimensions(data)
            if dims is not None and dims[0] * dims[1] > self.opts.max_pixels:
                raise HTTPError(413, f"image too large: {dims[0]}x{dims[1]} pixels; the limit is {self.opts.max_pixels:,}")
            flag = cv2.IMREAD_GRAYSCALE if m.channels == 1 else cv2.IMREAD_COLOR
            strip = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
            if strip is None:
                raise HTTPError(400, "undecodable crops: the PNG data is corrupt or truncated")
            h, w = strip.shape[:2]
            if h != s or w % s or w == 0:
                raise HTTPError(400, f"wrong crop shape: a PNG of crops must be {s} pixels high and N*{s} wide "
                                     f"(crops side by side), got {w}x{h}")
            n = w // s
            if m.channels == 1:
                crops = strip.reshape(s, n, s).transpose(1, 0, 2)
            else:
                crops = strip.reshape(s, n, s, 3).transpose(1, 3, 0, 2)
            fmt = "png"
        else:
            raise HTTPError(415, "undecodable crops: send an .npy array or a PNG")
        if crops.dtype != np.uint8:
            raise HTTPError(400, f"wrong crop type: crops must be uint8, got {crops.dtype}")
        want = (s, s) if m.channels == 1 else (m.channels, s, s)
        ok = crops.ndim >= 3 and (crops.shape[1:] == want or (m.channels == 1 and crops.shape[1:] == (1, s, s)))
        if not ok:
            raise HTTPError(400, f"wrong crop shape: expected (N, {', '.join(map(str, want))})"
                                 f"{f' or (N, 1, {s}, {s})' if m.channels == 1 else ''} uint8, got {crops.shape}")
        if crops.shape[0] == 0:
            raise HTTPError(400, "no crops: the array holds 0 crops")
        if crops.shape[0] > self.opts.max_crops:
            raise HTTPError(413, f"too many crops: {crops.shape[0]}; the limit is {self.opts.max_crops} per request")
        return np.ascontiguousarray(crops), fmt

    async def _generate(self, req: ParsedRequest) -> Reply:
        crops, fmt = self._read_crops(req.data)
        f = req.fields
        targets = _parse_targets(f.get("targets"))
        if targets is None:
            targets = _parse_emotion(f.get("emotion"))
        elif len(targets) != crops.shape[0]:
            raise HTTPError(400, f"got {len(targets)} targets for {crops.shape[0]} crops; give one target, or exactly one per crop")
        seed = _parse_seed(f.get("seed"))
        out = await self._in_worker(self._generate_sync, crops, targets, seed)
        if fmt == "npy":
            buf = io.BytesIO()
            np.save(buf, out, allow_pickle=False)
            return Reply(200, buf.getvalue(), "application/octet-stream", {"X-Crop-Count": str(out.shape[0])})
        flat = out.reshape(out.shape[0], self.meta.image_size, self.meta.image_size) if self.meta.channels == 1 else out
        strip = (np.concatenate(list(flat), axis=1) if self.meta.channels == 1
                 else np.concatenate([c.transpose(1, 2, 0) for c in flat], axis=1))
        return Reply(200, encode_image(strip, "png"), "image/png", {"X-Crop-Count": str(out.shape[0])})

    # -- auth and the page -------------------------------------------------------
    def _token_given(self, query: Mapping[str, str], headers: Mapping[str, str]) -> tuple[Optional[str], str]:
        """The token a request carries and where: an Authorization header, a ``token`` query parameter, or the
        page's cookie."""
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip(), "header"
        if query.get("token"):
            return str(query["token"]), "query"
        from http.cookies import CookieError, SimpleCookie

        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except CookieError:
            return None, ""
        if TOKEN_COOKIE in cookie:
            return cookie[TOKEN_COOKIE].value, "cookie"
        return None, ""

    def check_auth(self, path: str, query: Mapping[str, str], headers: Mapping[str, str]
                   ) -> tuple[Optional[Reply], Optional[str]]:
        """(a 401 reply or None, a Set-Cookie value or None). ``headers`` with lower-case names."""
        if not self.opts.token:
            return None, None
        path = "/" + path.strip("/")
        given, where = self._token_given(query, headers)
        if given is None or not hmac.compare_digest(given.encode("utf-8", "replace"), self.opts.token.encode("utf-8")):
            return self._unauthorized(path, given), None
        if where == "query" and path in ("/", "/index.html"):  # the page keeps it: its files and calls send it
            return None, f"{TOKEN_COOKIE}={self.opts.token}; Path=/; HttpOnly; SameSite=Strict"
        return None, None

    def _unauthorized(self, path: str, given: Optional[str]) -> Reply:
        with self._stats_lock:
            self.stats["unauthorized"] += 1
        why = "a wrong token" if given else "no token"
        message = (f"unauthorized: the request has {why}; this service needs its token, as 'Authorization: Bearer "
                   "<token>', a token query parameter, or (for the page) open it once as /?token=<token>")
        headers = {"WWW-Authenticate": 'Bearer realm="fexsdk"', "Cache-Control": "no-store"}
        if path in ("/", "/index.html"):  # a person in a browser: a page that says what to do
            import html

            body = (f"<!doctype html><meta charset=utf-8><title>fexsdk: token needed</title>"
                    f"<p>{html.escape(message)}</p>").encode("utf-8")
            return Reply(401, body, "text/html", headers)
        reply = _error_reply(401, message)
        reply.headers.update(headers)
        return reply

    def _static(self, path: str) -> Reply:
        name, media_type = STATIC_FILES[path]
        body = (Path(__file__).parent / "web" / name).read_bytes()
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        if name == "index.html":
            headers.update({"Content-Security-Policy": PAGE_CSP, "X-Frame-Options": "DENY",
                            "Referrer-Policy": "no-referrer"})
        return Reply(200, body, media_type, headers)

    async def handle(self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str],
                     body: bytes, client: str = "") -> Reply:
        """Answer one HTTP request (no Ray needed): every refusal is a 4xx naming the problem. ``client`` (the
        peer's address) keys the live channel's frame-rate limit."""
        path = "/" + path.strip("/")
        headers = {k.lower(): v for k, v in headers.items()}
        query = dict(query)
        refused, set_cookie = self.check_auth(path, query, headers)
        if refused is not None:
            return refused
        query.pop("token", None)
        routes = {"/healthz": ("GET",), "/model": ("GET",), "/models": ("GET",), "/stats": ("GET",),
                  "/apply": ("POST",), "/apply.json": ("POST",), "/generate": ("POST",), "/live": ("POST",),
                  **{p: ("GET",) for p in STATIC_FILES}}
        if path not in routes:
            return _error_reply(404, f"no endpoint {path}; endpoints: {', '.join(sorted(routes))}")
        if method.upper() not in routes[path] and not (method.upper() == "HEAD" and "GET" in routes[path]):
            return _error_reply(405, f"{path} takes {' or '.join(routes[path])}, not {method.upper()}")
        if path in STATIC_FILES:
            reply = self._static(path)
            if set_cookie:
                reply.headers["Set-Cookie"] = set_cookie
            return reply
        if path == "/healthz":
            return _json_reply({"status": "ok"})
        if path == "/model":
            return _json_reply(self.model_info())
        if path == "/models":
            return _json_reply({"models": self.model_names(), "default": self.model_name})
        if path == "/stats":
            with self._stats_lock:
                return _json_reply(dict(self.stats))
        with self._stats_lock:
            self.stats["requests"] += 1
        try:
            if path == "/live":
                return await self._live(query, headers, body, client)
            if len(body) > self.opts.max_body_bytes:
                raise HTTPError(413, f"request too large: {len(body):,} bytes; the limit is {self.opts.max_body_bytes:,}")
            ctype = headers.get("content-type", "")
            field = "crops" if path == "/generate" else "image"
            req = parse_request(body, ctype, query, field)
            if path == "/generate":
                return await self._generate(req)
            return await self._apply(req, as_json=path == "/apply.json")
        except HTTPError as exc:
            self._error()
            reply = _error_reply(exc.status, exc.message)
            if exc.status == 429:
                reply.headers["Retry-After"] = "1"
            return reply
        except ValueError as exc:  # fexsdk's own checks (face boxes, targets, strength): the request's fault
            self._error()
            return _error_reply(400, str(exc))

    async def _live(self, query: Mapping[str, str], headers: Mapping[str, str], body: bytes, client: str) -> Reply:
        """One frame of the page's live mode: the client's frame-rate and frame-size limits, then /apply."""
        o = self.opts
        wait = self._live_limit.wait_s(client or "?")
        if wait > 0:
            with self._stats_lock:
                self.stats["live_refused"] += 1
            raise HTTPError(429, f"too many frames: the live channel takes at most {o.live_max_fps:g} frames a second "
                                 f"per client; send the next in {1000 * wait:.0f} ms")
        if len(body) > o.live_max_bytes:
            raise HTTPError(413, f"frame too large: {len(body):,} bytes; the live channel takes at most "
                                 f"{o.live_max_bytes:,} bytes a frame")
        if body:
            dims = image_dimensions(body)
            if dims is not None and dims[0] * dims[1] > o.live_max_pixels:
                raise HTTPError(413, f"frame too large: {dims[0]}x{dims[1]} is {dims[0] * dims[1]:,} pixels; the live "
                                     f"channel takes at most {o.live_max_pixels:,} pixels a frame")
        req = parse_request(body, headers.get("content-type", ""), query, "image")
        reply = await self._apply(req, as_json=False, max_pixels=min(o.live_max_pixels, o.max_pixels))
        with self._stats_lock:
            self.stats["live_frames"] += 1
        return reply

    def _error(self) -> None:
        with self._stats_lock:
            self.stats["errors"] += 1

    async def __call__(self, request):
        """Ray Serve's entry point: a Starlette request in, a Starlette response out."""
        from starlette.responses import RedirectResponse, Response

        path = request.url.path
        root = request.scope.get("root_path") or ""  # the app's route_prefix, when it is not "/"
        if root.strip("/") and path.startswith(root):
            path = path[len(root):]
        if root.strip("/") and path == "" and request.method.upper() in ("GET", "HEAD"):
            # /prefix -> /prefix/, so that the page's relative links (app.js, apply.json) stay under the prefix
            target = root.rstrip("/") + "/" + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(target, status_code=307)
        length = request.headers.get("content-length")
        limit = max(self.opts.max_body_bytes, self.opts.live_max_bytes)
        query = dict(request.query_params)
        if length and length.isdigit() and int(length) > limit:  # refused unread (after the token check)
            refused, _ = self.check_auth(path, query, {k.lower(): v for k, v in request.headers.items()})
            reply = refused or _error_reply(413, f"request too large: {int(length):,} bytes; the limit is {limit:,}")
        else:
            body = await request.body()
            try:
                reply = await self.handle(request.method, path, query, dict(request.headers), body,
                                          client=request.client.host if request.client else "")
            except Exception as exc:  # a bug, not the client's fault: say so and keep serving
                self._error()
                reply = _error_reply(500, f"internal error: {type(exc).__name__}: {exc}")
        return Response(reply.body, status_code=reply.status, media_type=reply.media_type, headers=reply.headers)


# -- Ray Serve -------------------------------------------------------------------------
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

