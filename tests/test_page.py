"""``fex serve``'s page (fexsdk/serve/web) in a real browser, and the service's token auth.

The browser tests drive Debian's headless ``chromium`` through ``chromedriver`` with Selenium; they skip
where any of the three is missing (``apt-get install -y chromium chromium-driver``; selenium is in the dev
extra). Live mode gets a fake webcam that plays a real face clip (scikit-image's astronaut, written as a
.y4m with the bundled ffmpeg). The page keeps the last frame it sent and the one it shows for it on a hidden
element, so the test can check that the frame shown is ``Transfer.apply`` of the frame sent, same seed.

Ray and the two apps (one open, one behind a token at /secure) start once for the module, as in
tests/test_serve.py.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")

from fexsdk.transfer import Transfer  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "example.png"  # two faces, 640x360
TOKEN = "page-test-token-42"
# No batch wait: the live test sends one frame at a time.
OPTIONS = {"device": "cpu", "threads": 1, "max_batch_size": 8, "batch_wait_s": 0.0, "workers": 2,
           "max_pixels": 4_000_000, "max_body_bytes": 3_000_000, "live_max_fps": 30.0}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 180  # two busy CPU cores: the first request loads the model in the replica


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def from_data_url(url: str) -> bytes:
    assert url.startswith("data:"), url[:40]
    return base64.b64decode(url.split(",", 1)[1])


def http(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read(), resp.headers  # case-insensitive names
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


@pytest.fixture(scope="module")
def ref() -> Transfer:
    return Transfer(device="cpu", threads=1)


# -- fex serve refuses to expose itself without a token (no Ray, no browser) ---------------------------------
class _StopBeforeRay(Exception):
    pass


def _serve_until_ray(monkeypatch, argv: list[str]) -> dict:
    """`fex <argv>` run up to where Ray would start; returns what run_local was given."""
    import fexsdk.serve as serve_mod
    from fexsdk.cli import main

    seen: dict = {}
    real = serve_mod.run_local

    def spy(args, **kwargs):
        seen.update(args=dict(args), **kwargs)
        return real(args, **kwargs)

    def stop(host, port):
        raise _StopBeforeRay

    monkeypatch.setattr(serve_mod, "run_local", spy)
    monkeypatch.setattr(serve_mod.app, "check_port_free", stop)  # where run_local looks it up
    with pytest.raises(_StopBeforeRay):
        main(argv)
    return seen


def test_non_loopback_needs_a_token_or_no_auth(monkeypatch, capsys):
    from fexsdk.cli import main

    monkeypatch.delenv("FEX_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0 is not a loopback address" in err and "--no-auth" in err
    assert main(["serve", "--host", "0.0.0.0", "--token", "short"]) == 2
    assert "at least 8 characters" in capsys.readouterr().err
    assert main(["serve", "--host", "0.0.0.0", "--token", TOKEN, "--no-auth"]) == 2
    assert "contradict" in capsys.readouterr().err
    # a token by flag or by environment, or --no-auth said explicitly: it goes on to start
    assert _serve_until_ray(monkeypatch, ["serve", "--host", "0.0.0.0", "--token", TOKEN])["args"]["token"] == TOKEN
    assert _serve_until_ray(monkeypatch, ["serve", "--host", "0.0.0.0", "--no-auth"])["no_auth"] is True
    monkeypatch.setenv("FEX_TOKEN", TOKEN)
    assert _serve_until_ray(monkeypatch, ["serve", "--host", "0.0.0.0"])["args"]["token"] == TOKEN
    monkeypatch.delenv("FEX_TOKEN")
    # loopback needs none
    assert _serve_until_ray(monkeypatch, ["serve", "--host", "127.0.0.1"])["args"]["token"] is None


# -- Ray Serve, two apps: open at /, behind a token at /secure --------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
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
                  name="fexsdk-page", route_prefix="/", blocking=False)
        serve.run(make_app({**OPTIONS, "token": TOKEN}, num_replicas=1, ray_actor_options={"num_cpus": 0}),
                  name="fexsdk-page-secure", route_prefix="/secure", blocking=False)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        if started_ray:
            ray.shutdown()


def test_token_on_page_api_and_live_channel(server, ref):
    png = EXAMPLE.read_bytes()
    secure = server + "/secure"
    for method, path, body in [("GET", "/", None), ("GET", "/app.js", None), ("GET", "/healthz", None),
                               ("GET", "/models", None), ("POST", "/apply?emotion=happy", png),
                               ("POST", "/apply.json?emotion=happy", png), ("POST", "/live?emotion=happy", png)]:
        for headers in ({}, {"Authorization": "Bearer wrong-token-123"}, {"Cookie": "fex_token=wrong-token-123"}):
            status, out, got_headers = http(secure + path, body, headers, method)
            assert status == 401, (method, path, headers, status, out[:200])
            assert "unauthorized" in out.decode() and got_headers.get("WWW-Authenticate", "").startswith("Bearer")
    # ... and keeps serving: the same calls with the token go through
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert http(secure + "/healthz", headers=good)[0] == 200
    status, out, _ = http(secure + "/live?emotion=happy&seed=2", png, good, "POST")
    assert status == 200 and np.array_equal(decode(out), ref.apply(decode(png), "happy", seed=2))
    status, page, headers = http(secure + f"/?token={TOKEN}")
    assert status == 200 and b"<title>fexsdk" in page
    assert headers["Set-Cookie"].startswith(f"fex_token={TOKEN};") and "HttpOnly" in headers["Set-Cookie"]
    assert http(secure + "/app.js", headers={"Cookie": f"fex_token={TOKEN}"})[0] == 200
    assert http(server + "/healthz")[0] == 200  # the open app: no token needed


def test_live_channel_limits(server):
    """The live channel's frame-size limit (pixels, before decoding); the frame-rate limit is tested without Ray."""
    big = cv2.imencode(".png", np.zeros((1000, 1000, 3), np.uint8))[1].tobytes()
    status, out, _ = http(server + "/live?emotion=happy", big, {}, "POST")
    assert status == 413 and "frame too large: 1000x1000" in out.decode()
    status, out, _ = http(server + "/apply?emotion=happy", big, {}, "POST")  # uploads keep today's limits
    assert status == 200


def test_live_frame_rate_limit_per_client():
    import asyncio

    from fexsdk.serve import FexService, RateLimiter

    lim = RateLimiter(10.0)
    assert all(lim.wait_s("a", now=100.0) == 0 for _ in range(10))  # a second's burst
    assert lim.wait_s("a", now=100.0) == pytest.approx(0.1)
    assert lim.wait_s("b", now=100.0) == 0  # another client has its own
    assert lim.wait_s("a", now=100.2) == 0
    svc = FexService({"device": "cpu", "threads": 1, "workers": 1, "live_max_fps": 1.0}, _use_serve_batch=False)
    small = cv2.imencode(".png", np.zeros((32, 32, 3), np.uint8))[1].tobytes()

    async def calls():
        return [await svc.handle("POST", "/live", {"emotion": "happy"}, {}, small, client="10.0.0.1")
                for _ in range(2)] + [await svc.handle("POST", "/live", {"emotion": "happy"}, {}, small,
                                                       client="10.0.0.2")]

    first, second, other = asyncio.run(calls())
    assert (first.status, second.status, other.status) == (200, 429, 200)
    assert "too many frames" in second.body.decode() and second.headers["Retry-After"] == "1"


# -- the page in headless Chromium ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def face_clip(tmp_path_factory) -> Path:
    """A few 320x240 frames of a real face (the astronaut) as a .y4m, Chromium's fake webcam."""
    data = pytest.importorskip("skimage.data")
    import imageio_ffmpeg

    rgb = np.ascontiguousarray(data.astronaut()[:384])  # 512x384: the face and shoulders, 4:3
    frames = [cv2.resize(np.roll(rgb, 4 * i, axis=1), (320, 240), interpolation=cv2.INTER_AREA) for i in range(4)]
    path = tmp_path_factory.mktemp("clip") / "astronaut.y4m"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "rawvideo",
                    "-pix_fmt", "rgb24", "-s", "320x240", "-r", "5", "-i", "-", "-pix_fmt", "yuv420p", str(path)],
                   input=b"".join(f.tobytes() for f in frames), check=True)
    return path


@pytest.fixture(scope="module")
def driver(request, tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium/chromedriver: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra)")
    face_clip = request.getfixturevalue("face_clip")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                 f"--use-file-for-fake-video-capture={face_clip}"]:
        opts.add_argument(flag)
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    drv.set_page_load_timeout(120)
    try:
        yield drv
    finally:
        drv.quit()


def wait_for(drv, condition, what: str, timeout: float = WAIT_S):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(drv, timeout, poll_frequency=0.2).until(lambda d: condition(d))
    except TimeoutException:
        message = drv.execute_script("return document.getElementById('message').textContent")
        raise AssertionError(f"timed out waiting for {what}; the page's message: {message!r}") from None


def open_page(drv, url: str) -> None:
    drv.get(url)
    wait_for(drv, lambda d: d.execute_script("return document.body.dataset.ready"), "the page to load its model")
    assert drv.execute_script("return document.body.dataset.ready") == "yes"


def after_src(drv) -> str:
    return drv.execute_script("const a = document.getElementById('after'); return a.hidden ? '' : (a.src || '')")


def test_photo_mode(driver, server, ref):
    """Pick a photo: the result appears, differs from the photo, and is Transfer.apply's (seed 0, happy, the
    model's strength); both faces are outlined, clicking one leaves it out, a face takes its own emotion, and
    the model picker switches to the bundled warp model."""
    from selenium.webdriver.common.by import By

    open_page(driver, server + "/")
    image = decode(EXAMPLE.read_bytes())
    driver.find_element(By.ID, "photo-file").send_keys(str(EXAMPLE))
    wait_for(driver, lambda d: after_src(d).startswith("data:image/png"), "the result image")
    got = decode(from_data_url(after_src(driver)))
    assert got.shape == image.shape and not np.array_equal(got, image)
    assert np.array_equal(got, ref.apply(image, "happy", seed=0))
    assert driver.find_element(By.ID, "download").get_attribute("href") == after_src(driver)
    rects = driver.find_elements(By.CSS_SELECTOR, "#boxes rect")
    assert len(rects) == 2
    first = after_src(driver)
    rects[0].click()  # the leftmost face: left as it is now
    wait_for(driver, lambda d: after_src(d) not in ("", first), "the result without face 0")
    assert np.array_equal(decode(from_data_url(after_src(driver))), ref.apply(image, "happy", faces=[1], seed=0))
    assert "excluded" in driver.find_elements(By.CSS_SELECTOR, "#boxes rect")[0].get_attribute("class")
    # face 1 gets an emotion of its own (sent as emotion=1:sad), then the model picker takes the bundled warp
    from selenium.webdriver.support.ui import Select

    second = after_src(driver)
    Select(driver.find_element(By.CSS_SELECTOR, "select[aria-label='emotion of face 1']")).select_by_value("sad")
    wait_for(driver, lambda d: after_src(d) not in ("", second), "the result with face 1 sad")
    assert np.array_equal(decode(from_data_url(after_src(driver))), ref.apply(image, {1: "sad"}, seed=0))
    third = after_src(driver)
    Select(driver.find_element(By.ID, "model")).select_by_value("warp")
    wait_for(driver, lambda d: after_src(d) not in ("", third), "the result from the warp model")
    warp = Transfer("warp", device="cpu", threads=1)
    assert np.array_equal(decode(from_data_url(after_src(driver))), warp.apply(image, {1: "sad"}, seed=0))


def test_bad_upload_shows_the_services_message(driver, server, tmp_path):
    from selenium.webdriver.common.by import By

    open_page(driver, server + "/")
    bad = tmp_path / "not-a-photo.png"
    bad.write_bytes(b"this is a text file, not a PNG\n" * 10)
    driver.find_element(By.ID, "photo-file").send_keys(str(bad))
    wait_for(driver, lambda d: d.find_element(By.ID, "message").is_displayed(), "an error message")
    text = driver.find_element(By.ID, "message").text
    assert "415" in text and "undecodable image" in text and "JPEG" in text, text
    assert after_src(driver) == ""


def probe(drv) -> dict:
    return drv.execute_script("return Object.assign({}, document.getElementById('live-probe').dataset)")


def test_live_mode_shows_transfer_apply_of_the_frame_sent(driver, server, ref):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    open_page(driver, server + "/")
    driver.find_element(By.ID, "tab-live").click()
    driver.find_element(By.ID, "live-start").click()
    wait_for(driver, lambda d: int(probe(d).get("frames", "0")) >= 2, "two changed webcam frames")
    assert "FPS" in driver.find_element(By.ID, "live-stats").text
    # the emotion is switched while it runs
    Select(driver.find_element(By.ID, "emotion")).select_by_value("surprise")
    wait_for(driver, lambda d: probe(d).get("emotion") == "surprise", "a frame sent as surprise")
    p = probe(driver)
    driver.find_element(By.ID, "live-stop").click()
    sent, shown = from_data_url(p["sent"]), from_data_url(p["received"])
    assert sent[:2] == b"\xff\xd8" and shown[:2] == b"\xff\xd8"  # JPEG both ways
    frame = decode(sent)
    assert frame.shape == (240, 320, 3) and int(p["faces"]) >= 1
    want = ref.apply(frame, "surprise", seed=int(p["seed"]))
    assert not np.array_equal(want, frame)
    # the service answers a JPEG frame with a JPEG (quality 95) of Transfer.apply's result
    assert np.array_equal(decode(shown), decode(cv2.imencode(".jpg", want, [cv2.IMWRITE_JPEG_QUALITY, 95])[1]))
    assert float(p["fps"]) > 0 and float(p["rtt"]) > 0


def test_page_takes_the_token_once_and_keeps_it(driver, server, ref):
    """/secure/?token=...: the page loads, drops the token from the address bar, and its calls (photo and
    live channel) go through on the cookie; without the token the page is 401."""
    from selenium.webdriver.common.by import By

    driver.get(server + "/secure/")
    assert "unauthorized" in driver.find_element(By.TAG_NAME, "body").text
    open_page(driver, server + f"/secure/?token={TOKEN}")
    assert "token" not in driver.current_url
    driver.find_element(By.ID, "photo-file").send_keys(str(EXAMPLE))
    wait_for(driver, lambda d: after_src(d).startswith("data:image/png"), "the result image")
    image = decode(EXAMPLE.read_bytes())
    assert np.array_equal(decode(from_data_url(after_src(driver))), ref.apply(image, "happy", seed=0))
    driver.find_element(By.ID, "tab-live").click()
    driver.find_element(By.ID, "live-start").click()
    wait_for(driver, lambda d: int(probe(d).get("frames", "0")) >= 1, "a changed webcam frame")
    driver.find_element(By.ID, "live-stop").click()
