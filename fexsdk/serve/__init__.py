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
- ``GET /``: the page (fexsdk/serve/web: photo mode, live webcam mode, model picker), and its ``/app.js`` and
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

One job a module: :mod:`~fexsdk.serve.options` (:class:`ServeOptions`), :mod:`~fexsdk.serve.auth` (token, exposure,
rate limit), :mod:`~fexsdk.serve.request` (parsing requests, encoding replies), :mod:`~fexsdk.serve.service`
(:class:`FexService`, one replica), :mod:`~fexsdk.serve.app` (Ray Serve: :func:`build_app`, :func:`run_local`);
the page's files are in ``fexsdk/serve/web/``.
"""

# Image formats accepted and answered, by their first bytes. The header reader is shared with `fex apply`
# (fexsdk.images), so a huge image is refused before decoding in both.
from fexsdk.images import JPEG_MAGIC, PNG_MAGIC, image_dimensions
from fexsdk.serve.app import (
    APP_NAME,
    DEFAULT_PORT,
    build_app,
    check_model,
    check_port_free,
    deploy_failure_reason,
    make_app,
    run_local,
)
from fexsdk.serve.auth import MIN_TOKEN_LENGTH, TOKEN_COOKIE, RateLimiter, check_exposure, check_token, is_loopback
from fexsdk.serve.options import ServeOptions
from fexsdk.serve.request import (
    NPY_MAGIC,
    HTTPError,
    ParsedRequest,
    Reply,
    decode_image,
    encode_image,
    image_format,
    parse_multipart,
    parse_request,
)
from fexsdk.serve.service import PAGE_CSP, STATIC_FILES, FexService

__all__ = [
    "APP_NAME", "DEFAULT_PORT", "JPEG_MAGIC", "MIN_TOKEN_LENGTH", "NPY_MAGIC", "PAGE_CSP", "PNG_MAGIC", "STATIC_FILES",
    "TOKEN_COOKIE", "FexService", "HTTPError", "ParsedRequest", "RateLimiter", "Reply", "ServeOptions", "build_app",
    "check_exposure", "check_model", "check_port_free", "check_token", "decode_image", "deploy_failure_reason",
    "encode_image", "image_dimensions", "image_format", "is_loopback", "make_app", "parse_multipart", "parse_request",
    "run_local",
]
