"""The request handler of one replica, :class:`FexService`: its Transfer, worker threads, the batch queue and
the routes (the page included)."""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import json
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np

from fexsdk._extras import require
from fexsdk.backends import Backend
from fexsdk.images import PNG_MAGIC, image_dimensions
from fexsdk.serve.auth import TOKEN_COOKIE, RateLimiter
from fexsdk.serve.options import ServeOptions
from fexsdk.serve.request import (NPY_MAGIC, HTTPError, ParsedRequest, Reply, _error_reply, _json_reply,
                                  _parse_emotion, _parse_faces, _parse_seed, _parse_strength, _parse_targets,
                                  decode_image, encode_image, parse_request)


#: The page and its files (fexsdk/serve/web), by path.
STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/index.html": ("index.html", "text/html; charset=utf-8"),
                "/app.js": ("app.js", "text/javascript; charset=utf-8"),
                "/style.css": ("style.css", "text/css; charset=utf-8")}
#: The page loads nothing from elsewhere, and no other site may frame it.
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; "
            "script-src 'self'; style-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'none'")


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
