"""``fex serve``: the HTTP service on Ray Serve (fexsdk/serve/).

The Ray tests start Ray and the app once for the module (small: 2 CPUs, no dashboard) and post real
requests over HTTP; they skip when Ray Serve is not installed (``pip install 'fexsdk[serve]'``). The
request parsing and the handler itself are also tested without Ray.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")

from fexsdk.serve import (  # noqa: E402
    FexService,
    HTTPError,
    image_dimensions,
    parse_multipart,
)
from fexsdk.transfer import Transfer  # noqa: E402

# Ray's own pydantic deprecation warnings, not ours
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "example.png"  # two faces, 640x360
MAX_BATCH = 8
OPTIONS = {"device": "cpu", "threads": 1, "max_batch_size": MAX_BATCH, "batch_wait_s": 1.0, "workers": 4,
           "max_pixels": 4_000_000, "max_body_bytes": 3_000_000}


@pytest.fixture(scope="module")
def ref() -> Transfer:
    return Transfer(device="cpu", threads=1)


@pytest.fixture(scope="module")
def png_bytes() -> bytes:
    return EXAMPLE.read_bytes()


@pytest.fixture(scope="module")
def jpeg_bytes(png_bytes) -> bytes:
    img = cv2.imdecode(np.frombuffer(png_bytes, np.uint8), cv2.IMREAD_UNCHANGED)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def multipart(fields: dict) -> tuple[bytes, str]:
    boundary = "fexsdk-test-boundary-7d1"
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f"--{boundary}\r\n".encode())
        if isinstance(value, bytes):
            out.write(f'Content-Disposition: form-data; name="{name}"; filename="{name}.bin"\r\n'
                      "Content-Type: application/octet-stream\r\n\r\n".encode())
            out.write(value)
        else:
            out.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode())
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


# -- without Ray: parsing and the handler ------------------------------------------------
def test_image_dimensions_from_headers():
    for w, h in [(640, 360), (1, 1), (3001, 17)]:
        img = np.zeros((h, w, 3), np.uint8)
        assert image_dimensions(cv2.imencode(".png", img)[1].tobytes()) == (w, h)
        assert image_dimensions(cv2.imencode(".jpg", img)[1].tobytes()) == (w, h)
        progressive = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
        assert image_dimensions(progressive) == (w, h)
    assert image_dimensions(b"not an image") is None


def test_multipart_keeps_binary_bytes():
    payload = bytes(range(256)) * 4 + b"\r\n--not-the-boundary\r\n\r\n" + b"\r\n"
    body, ctype = multipart({"image": payload, "emotion": "happy=0.7,surprise=0.3", "seed": "3"})
    fields = parse_multipart(body, ctype)
    assert fields["image"] == payload
    assert fields["emotion"] == b"happy=0.7,surprise=0.3" and fields["seed"] == b"3"
    with pytest.raises(HTTPError, match="boundary"):
        parse_multipart(body, "multipart/form-data")


def test_parse_target():
    """The one reader of typed targets (fexsdk.emotions.parse_target), shared by fex apply -e and the service."""
    from fexsdk.emotions import parse_target

    assert parse_target("joy") == "joy"
    assert parse_target("3") == 3
    assert parse_target("happy=0.7, surprise=0.3") == {"happy": 0.7, "surprise": 0.3}
    assert parse_target('{"happy": 0.7, "surprise": 0.3}') == {"happy": 0.7, "surprise": 0.3}
    for text, words in [("blah", "unknown emotion 'blah'"), ("happy=abc", "bad intensities"),
                        ("happy=-1", "bad intensities"), ("happy=0,sad=0", "not all be zero"),
                        ("blah=0.5", "unknown emotion 'blah'"), ("", "no emotion"), (None, "no emotion"),
                        ("happy=0.2,happy=0.9", "'happy' is given twice"),
                        ('{"happy": 0.2, "happy": 0.9}', "'happy' is given twice"),
                        ("happy=0.2,joy=0.5", "name the same emotion")]:
        with pytest.raises(ValueError, match=words):
            parse_target(text)


def test_cli_and_service_refuse_an_emotion_given_twice(tmp_path, capsys, png_bytes):
    """happy=0.2,happy=0.9 was refused by fex apply and read as {"happy": 0.9} by the service: both refuse it now,
    with the same message."""
    from fexsdk.cli import main

    text = "happy=0.2,happy=0.9"
    message = f"'happy' is given twice in '{text}'; give each emotion once"
    assert main(["apply", str(EXAMPLE), "-e", text, "-o", str(tmp_path / "out.png"), "--device", "cpu"]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out.png").exists()
    svc = FexService({"device": "cpu", "threads": 1, "workers": 1}, _use_serve_batch=False)

    async def calls():
        query = await svc.handle("POST", "/apply", {"emotion": text}, {}, png_bytes)
        body = json.dumps({"image": base64.b64encode(png_bytes).decode(), "emotion": text}).encode()
        as_json = await svc.handle("POST", "/apply.json", {}, {"Content-Type": "application/json"}, body)
        crops = await svc.handle("POST", "/generate", {"targets": json.dumps([text])}, {},
                                 npy(np.zeros((1, 48, 48), np.uint8)))
        return query, as_json, crops

    for reply in asyncio.run(calls()):
        assert reply.status == 400 and "is given twice" in json.loads(reply.body)["error"], reply.body
    assert message in json.loads(asyncio.run(calls())[0].body)["error"]


def test_handler_without_ray_matches_apply(ref, png_bytes):
    """The handler alone (each request's faces by themselves): same bytes as Transfer.apply, errors as 4xx."""
    svc = FexService({"device": "cpu", "threads": 1, "workers": 2}, _use_serve_batch=False)

    async def calls():
        good = await svc.handle("POST", "/apply", {"emotion": "surprise", "seed": "11"}, {}, png_bytes)
        bad = await svc.handle("POST", "/apply", {"emotion": "furious"}, {}, png_bytes)
        return good, bad

    good, bad = asyncio.run(calls())
    assert good.status == 200 and good.media_type == "image/png"
    want, faces = ref.apply(decode(png_bytes), "surprise", seed=11, return_faces=True)
    assert np.array_equal(decode(good.body), want)
    assert json.loads(good.headers["X-Faces"]) == [[round(v, 2) for v in f.box] for f in faces]
    assert bad.status == 400 and "unknown emotion 'furious'" in json.loads(bad.body)["error"]
    assert svc.stats["requests"] == 2 and svc.stats["errors"] == 1


def test_route_prefix_is_stripped(png_bytes):
    """Under a route prefix (serve.yaml's route_prefix) the endpoints keep their names."""
    starlette = pytest.importorskip("starlette.requests", reason="Starlette comes with Ray Serve")
    svc = FexService({"device": "cpu", "threads": 1, "workers": 1}, _use_serve_batch=False)

    async def call(path):
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "/fex", "query_string": b"",
                 "headers": [], "server": ("127.0.0.1", 80), "scheme": "http"}

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        return await svc(starlette.Request(scope, receive))

    assert asyncio.run(call("/fex/healthz")).status_code == 200
    assert asyncio.run(call("/fex/nothing")).status_code == 404


def test_cli_parses_serve_options():
    from fexsdk.cli import build_parser

    args = build_parser().parse_args(["serve", "--replicas", "2", "--port", "8123", "--max-batch", "32",
                                      "--device", "cpu", "--model", "m.onnx"])
    assert (args.replicas, args.port, args.max_batch, args.device, args.model) == (2, 8123, 32, "cpu", "m.onnx")


class _StopBeforeRay(Exception):
    pass


def serve_cli_options(monkeypatch, argv: list[str]) -> dict:
    """The service options `fex <argv>` hands to run_local, which is run up to the point where Ray would start
    (its model check included); nothing is started."""
    import fexsdk.serve as serve_mod
    from fexsdk.cli import main

    seen: dict = {}
    real_run_local = serve_mod.run_local

    def spy(args, **kwargs):
        seen.update(args)
        return real_run_local(args, **kwargs)

    def stop(host, port):
        raise _StopBeforeRay

    monkeypatch.setattr(serve_mod, "run_local", spy)
    monkeypatch.setattr(serve_mod.app, "check_port_free", stop)  # where run_local looks it up
    with pytest.raises(_StopBeforeRay):
        main(argv)
    return seen


@pytest.fixture(scope="module")
def warp_ref() -> Transfer:
    return Transfer("warp", device="cpu", threads=1)


def test_fex_serve_model_warp_answers_like_transfer_apply(monkeypatch, warp_ref, png_bytes):
    """`fex serve --model warp`: the bundled name is accepted, and the service (without Ray: each request's faces
    by themselves) answers POST /apply with the bytes of Transfer("warp").apply for the same seed."""
    opts = serve_cli_options(monkeypatch, ["serve", "--model", "warp", "--device", "cpu", "--threads", "1"])
    assert opts["transfer"].model == "warp"
    svc = FexService({**opts, "workers": 2}, _use_serve_batch=False)
    assert svc.meta.is_warp and svc.model_info()["card"]["preset"] == warp_ref.meta.preset

    async def calls():
        return await asyncio.gather(*(svc.handle("POST", "/apply", {"emotion": e, "seed": s}, {}, png_bytes)
                                      for e, s in (("happy", "3"), ("surprise", "4"))))

    image = decode(png_bytes)
    for reply, (emotion, seed) in zip(asyncio.run(calls()), (("happy", 3), ("surprise", 4))):
        assert reply.status == 200, reply.body
        want = warp_ref.apply(image, emotion, seed=seed)
        assert not np.array_equal(want, image)
        assert reply.body == cv2.imencode(".png", want)[1].tobytes()
    assert svc.stats["faces"] == 4 and svc.stats["errors"] == 0


def test_fex_serve_refuses_an_unknown_bundled_name(capsys):
    from fexsdk.cli import main

    assert main(["serve", "--model", "no-such-model", "--device", "cpu"]) == 2
    assert "no bundled model named 'no-such-model'" in capsys.readouterr().err


# -- with Ray Serve: the real service over HTTP ----------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """Ray (2 CPUs, no dashboard) and the app, started once for this module; yields the base URL."""
    try:
        import ray
        from ray import serve
    except ImportError:
        pytest.skip("Ray Serve is not installed: pip install 'fexsdk[serve]'")

    from fexsdk.serve import make_app

    port = _free_port()
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(make_app(OPTIONS, num_replicas=1, ray_actor_options={"num_cpus": 0}),
                  name="fexsdk-test", route_prefix="/", blocking=False)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        if started_ray:
            ray.shutdown()


def http(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_health_and_model(server):
    status, _, body = http(f"{server}/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, _, body = http(f"{server}/model")
    info = json.loads(body)
    assert status == 200
    assert info["metadata"]["emotions"] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert info["metadata"]["image_size"] == 48 and info["metadata"]["channels"] == 1
    # The served model is the bundled default: its card is the file shipped beside it.
    from fexsdk.transfer import BUNDLED_DIR

    card = json.loads((BUNDLED_DIR / "default.json").read_text())
    assert info["card"]["preset"] == info["metadata"]["preset"] == card["preset"]
    assert info["card"] == card
    assert info["batching"] == {"max_batch_size": MAX_BATCH, "batch_wait_s": 1.0, "across_requests": True}


def test_concurrent_requests_batched_equal_apply(server, ref, png_bytes, jpeg_bytes):
    """Four requests of two faces each at once: their faces share generator calls, and every result is
    bit for bit Transfer.apply's with the same seed."""
    jobs = [
        # No strength in the request: the model's default strength for the emotion (None), as in apply.
        ("png", png_bytes, {"emotion": "happy", "seed": "1"}, ("happy", 1, None)),
        ("jpeg", jpeg_bytes, {"emotion": "surprise", "seed": "2"}, ("surprise", 2, None)),
        ("png", png_bytes, {"emotion": "happy=0.7,surprise=0.3", "seed": "3", "strength": "0.5"},
         ({"happy": 0.7, "surprise": 0.3}, 3, 0.5)),
        ("multipart", png_bytes, {"emotion": "anger", "seed": "4"}, ("angry", 4, None)),
    ]
    _, _, before = http(f"{server}/stats")
    results: dict = {}

    def post(i, kind, data, fields):
        if kind == "multipart":
            body, ctype = multipart({"image": data, **fields})
            results[i] = http(f"{server}/apply", body, {"Content-Type": ctype})
        else:
            query = urllib.parse.urlencode(fields)
            results[i] = http(f"{server}/apply?{query}", data, {"Content-Type": f"image/{kind}"})

    threads = [threading.Thread(target=post, args=(i, kind, data, fields)) for i, (kind, data, fields, _) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (kind, data, _, (target, seed, strength)) in enumerate(jobs):
        status, headers, body = results[i]
        assert status == 200, body
        want, faces = ref.apply(decode(data), target, seed=seed, strength=strength, return_faces=True)
        assert len(faces) == 2 and headers["X-Face-Count"] == "2"
        if kind == "jpeg":  # answered in the request's format, encoded like the service encodes
            assert headers["Content-Type"] == "image/jpeg"
            assert body == cv2.imencode(".jpg", want, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        else:
            assert headers["Content-Type"] == "image/png"
            assert np.array_equal(decode(body), want), f"request {i} differs from Transfer.apply"
    after = json.loads(http(f"{server}/stats")[2])
    before = json.loads(before)
    assert after["faces"] - before["faces"] == 8
    # faces of several requests went through the generator together
    assert after["largest_batch"] > 2


def test_alone_equals_apply_and_json_variant(server, ref, png_bytes):
    want, faces = ref.apply(decode(png_bytes), "sad", seed=9, faces=[[361, 81, 198, 198]], return_faces=True)
    body = json.dumps({"image": base64.b64encode(png_bytes).decode(), "emotion": "sadness", "seed": 9,
                       "faces": [[361, 81, 198, 198]]}).encode()
    status, headers, out = http(f"{server}/apply.json", body, {"Content-Type": "application/json"})
    assert status == 200, out
    obj = json.loads(out)
    assert obj["format"] == "png" and [f["box"] for f in obj["faces"]] == [[361.0, 81.0, 198.0, 198.0]]
    assert np.array_equal(decode(base64.b64decode(obj["image"])), want)
    # the same request as raw bytes: the same image
    status, _, raw = http(f"{server}/apply?emotion=sad&seed=9&faces=[[361,81,198,198]]", png_bytes)
    assert status == 200 and np.array_equal(decode(raw), want)


def test_generate_npy_and_png(server, ref):
    rng = np.random.default_rng(0)
    crops = cv2.GaussianBlur(rng.integers(0, 256, (5, 48, 48), dtype=np.uint8).transpose(1, 2, 0), (5, 5), 1)
    crops = np.ascontiguousarray(crops.transpose(2, 0, 1))
    targets = ["happy", "sad", {"surprise": 0.5}, "joy", 0]
    query = urllib.parse.urlencode({"targets": json.dumps(targets), "seed": 5})
    status, headers, body = http(f"{server}/generate?{query}", npy(crops), {"Content-Type": "application/octet-stream"})
    assert status == 200, body
    got = np.load(io.BytesIO(body), allow_pickle=False)
    assert np.array_equal(got, ref.generate(crops, targets, seed=5))
    # a PNG strip of crops side by side, one target for all: a PNG strip back
    strip = np.concatenate(list(crops[:3]), axis=1)
    status, headers, body = http(f"{server}/generate?emotion=fear&seed=6", cv2.imencode(".png", strip)[1].tobytes())
    assert status == 200 and headers["Content-Type"] == "image/png"
    want = ref.generate(crops[:3], "fear", seed=6)
    assert np.array_equal(decode(body), np.concatenate(list(want), axis=1))


def test_bad_requests_get_4xx_and_service_keeps_serving(server, ref, png_bytes):
    big = cv2.imencode(".png", np.zeros((1500, 3000), np.uint8))[1].tobytes()  # 4.5 Mpx, a small file
    body_no_image, ctype_no_image = multipart({"emotion": "happy"})
    cases = [
        ("/apply?emotion=happy", b"", {}, 400, "no image"),
        ("/apply", body_no_image, {"Content-Type": ctype_no_image}, 400, "no image"),
        ("/apply?emotion=happy", b"hello, not an image", {}, 415, "neither JPEG nor PNG"),
        ("/apply?emotion=happy", png_bytes[:300], {}, 400, "corrupt or truncated"),
        ("/apply?emotion=furious", png_bytes, {}, 400, "unknown emotion 'furious'"),
        ("/apply", png_bytes, {}, 400, "no emotion"),
        ("/apply?emotion=happy%3Dlots", png_bytes, {}, 400, "bad intensities"),
        ("/apply?emotion=happy%3D-0.5", png_bytes, {}, 400, "bad intensities"),
        ("/apply?emotion=happy&strength=-1", png_bytes, {}, 400, "bad strength"),
        ("/apply?emotion=happy&seed=abc", png_bytes, {}, 400, "bad seed"),
        ("/apply?emotion=happy&faces=[[1,2,3]]", png_bytes, {}, 400, "bad faces"),
        ("/apply?emotion=happy", big, {}, 413, "image too large"),
        ("/apply?emotion=happy", b"\x89PNG" + bytes(3_100_000), {}, 413, "request too large"),
        ("/apply.json", b"{not json", {"Content-Type": "application/json"}, 400, "not valid JSON"),
        ("/generate?emotion=happy", npy(np.zeros((3, 40, 40), np.uint8)), {}, 400, "wrong crop shape"),
        ("/generate?emotion=happy", npy(np.zeros((3, 48, 48), np.float32)), {}, 400, "uint8"),
        ("/generate?emotion=happy", cv2.imencode(".png", np.zeros((48, 50), np.uint8))[1].tobytes(), {}, 400,
         "wrong crop shape"),
        ("/generate?targets=[\"happy\"]", npy(np.zeros((2, 48, 48), np.uint8)), {}, 400, "1 targets for 2 crops"),
        ("/nothing", b"", {}, 404, "no endpoint /nothing"),
    ]
    for path, data, headers, want_status, words in cases:
        status, _, body = http(f"{server}{path}", data, headers, method="POST")
        assert status == want_status, (path, body)
        assert words in json.loads(body)["error"], (path, body)
    status, _, body = http(f"{server}/apply", method="GET")
    assert status == 405
    # still serving, and still right
    assert http(f"{server}/healthz")[0] == 200
    status, _, out = http(f"{server}/apply?emotion=neutral&seed=8", png_bytes)
    assert status == 200 and np.array_equal(decode(out), ref.apply(decode(png_bytes), "neutral", seed=8))


def test_warp_model_served_batched_over_http(server, monkeypatch, warp_ref, png_bytes):
    """`fex serve --model warp`'s application, deployed beside the module's app: concurrent requests share
    generator calls (every output of the warp head goes back row by row), each answered with Transfer.apply's bytes."""
    from ray import serve

    from fexsdk.serve import make_app

    opts = serve_cli_options(monkeypatch, ["serve", "--model", "warp", "--device", "cpu", "--threads", "1",
                                           "--max-batch", "8", "--batch-wait-ms", "1000"])
    serve.run(make_app({**opts, "workers": 4}, num_replicas=1, ray_actor_options={"num_cpus": 0}),
              name="fexsdk-warp", route_prefix="/warp", blocking=False)
    try:
        results: dict = {}
        jobs = [("happy", 1), ("surprise", 2)]

        def post(i, emotion, seed):
            results[i] = http(f"{server}/warp/apply?emotion={emotion}&seed={seed}", png_bytes)

        threads = [threading.Thread(target=post, args=(i, e, s)) for i, (e, s) in enumerate(jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        image = decode(png_bytes)
        for i, (emotion, seed) in enumerate(jobs):
            status, headers, body = results[i]
            assert status == 200, body
            assert body == cv2.imencode(".png", warp_ref.apply(image, emotion, seed=seed))[1].tobytes()
        stats = json.loads(http(f"{server}/warp/stats")[2])
        assert stats["faces"] == 4 and stats["largest_batch"] > 2
    finally:
        serve.delete("fexsdk-warp")


def test_cluster_yaml_is_a_valid_serve_config():
    """docs/serve.yaml: Ray Serve's own schema accepts it, and its args are valid service options."""
    try:
        import yaml
        from ray.serve.schema import ServeDeploySchema
    except ImportError:
        pytest.skip("Ray Serve is not installed: pip install 'fexsdk[serve]'")
    from fexsdk.serve import ServeOptions

    cfg = yaml.safe_load((REPO / "docs" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(cfg)
    app = schema.applications[0]
    assert app.import_path == "fexsdk.serve:build_app"
    (deployment,) = app.deployments
    assert deployment.name == "FexService" and deployment.ray_actor_options.num_gpus == 1
    assert deployment.autoscaling_config["max_replicas"] > deployment.autoscaling_config["min_replicas"]
    opts = ServeOptions.from_args(app.args)
    assert opts.transfer.device == "cuda" and opts.max_batch_size == 64


def test_load_benchmark_plain_loop_runs(tmp_path):
    """benchmarks/serve_load.py end to end on its no-Ray row (the service rows are what the module above tests)."""
    import subprocess
    import sys

    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve_load.py"), "--configs", "plain",
                           "--requests", "4", "--rounds", "2", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())["results"]["plain"]
    assert result["requests"] == 4 and result["errors"] == 0 and result["req_per_s"] > 0
    assert result["largest_batch"] >= 1 and "| plain Transfer.apply loop, 1 process | 1 |" in proc.stdout
