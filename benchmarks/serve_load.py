"""Load test of ``fex serve``: N concurrent clients posting real photos to POST /apply.

    python benchmarks/serve_load.py                                   # 8 clients, every configuration
    python benchmarks/serve_load.py --clients 16 --requests 200 --json serve_load.json
    python benchmarks/serve_load.py --configs plain 1-on 2-on         # a subset

Configurations (each on the same images, same clients, in this order):

    plain   no service: one process calling Transfer.apply in a loop, one request after another
            (decode, apply, encode: the work the service does per request)
    1-on    1 replica, faces batched across requests (max --max-batch faces, --batch-wait-ms)
    1-off   1 replica, each request's faces through the generator by themselves
    2-on    2 replicas, batched
    2-off   2 replicas, not batched

The service configurations are deployed side by side (one Ray instance, each under its own route
prefix) and every configuration runs --rounds times, interleaved, so that load from other jobs on a
shared machine, which drifts over minutes, is spread over all of them.

Images: docs/example.png (640x360, two faces) and, when scikit-image is installed, its astronaut
(512x512, one face), alternated. Every request names an emotion and a seed. Clients are threads of
this process (so on a small machine they share its cores with the service); every answer is checked
(200, same size, read from the PNG header). Prints requests/s, faces/s and the p50/p95 latency seen by the clients.
Ray is started here with --num-cpus CPUs and stopped at the end; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if (REPO / "fexsdk").is_dir() and str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout: use its code

import cv2  # noqa: E402

from fexsdk.transfer import Transfer  # noqa: E402

CONFIGS = {"plain": None, "1-on": (1, True), "1-off": (1, False), "2-on": (2, True), "2-off": (2, False)}
EMOTIONS = ("happy", "surprise", "angry", "sad")


def load_images() -> list[tuple[str, bytes]]:
    images = [("example.png 640x360", (REPO / "docs" / "example.png").read_bytes())]
    try:
        from skimage import data

        rgb = data.astronaut()
        images.append(("astronaut 512x512", cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()))
    except ImportError:
        pass
    return images


def percentile(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q)) if values else float("nan")


class Tally:
    """Latencies, faces, errors and busy time of one configuration, over all its rounds."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.faces = 0
        self.errors: list[str] = []
        self.seconds = 0.0

    def result(self) -> dict:
        n = len(self.latencies)
        return {"requests": n, "errors": len(self.errors), "first_error": self.errors[0] if self.errors else None,
                "seconds": self.seconds, "req_per_s": n / self.seconds if self.seconds else float("nan"),
                "faces_per_s": self.faces / self.seconds if self.seconds else float("nan"),
                "p50_ms": percentile(self.latencies, 50), "p95_ms": percentile(self.latencies, 95)}


def run_clients(send, first: int, n_requests: int, clients: int, tally: Tally) -> None:
    """``send(i)`` does request i and returns its face count; ``clients`` threads share requests first.. ."""
    lock = threading.Lock()
    counter = iter(range(first, first + n_requests))

    def client():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            try:
                n = send(i)
            except Exception as exc:  # counted and reported, the run goes on
                with lock:
                    tally.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            dt = time.perf_counter() - t0
            with lock:
                tally.latencies.append(dt)
                tally.faces += n

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tally.seconds += time.perf_counter() - t0


def plain_sender(images, threads):
    """Transfer.apply on decoded bytes, then encoded: the work the service does for a request."""
    tr = Transfer(device="cpu", threads=threads)
    counts: list[int] = []

    def send(i):
        data = images[i % len(images)][1]
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        out, found = tr.apply(img, EMOTIONS[i % len(EMOTIONS)], seed=i, return_faces=True)
        cv2.imencode(".png", out)
        counts.append(len(found))
        return len(found)

    return send, counts


def service_sender(url: str, images):
    from fexsdk.serve import image_dimensions

    sizes = [image_dimensions(b) for _, b in images]

    def send(i):
        k = i % len(images)
        req = urllib.request.Request(f"{url}/apply?emotion={EMOTIONS[i % len(EMOTIONS)]}&seed={i}", data=images[k][1],
                                     headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            body = resp.read()
            n = int(resp.headers["X-Face-Count"])
        if image_dimensions(body) != sizes[k]:  # checked from the PNG header: the clients stay light
            raise RuntimeError("answer has the wrong size")
        return n

    return send


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=96, help="requests per configuration (over all rounds)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each runs every configuration in turn")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--max-batch", type=int, default=16, help="faces per generator call when batching")
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads per replica (and for the plain loop)")
    ap.add_argument("--workers", type=int, default=None, help="worker threads per replica (default: the service's)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs for Ray (default: all)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    images = load_images()
    load_before = os.getloadavg()
    print(f"{cpu_name()}, {os.cpu_count()} cores; {args.clients} clients, {args.requests} requests per configuration; "
          f"images: {', '.join(name for name, _ in images)}", flush=True)
    tallies = {name: Tally() for name in args.configs}
    senders = {}
    plain_counts: list[int] = []
    if "plain" in args.configs:
        senders["plain"], plain_counts = plain_sender(images, args.threads)
    served = [c for c in args.configs if c != "plain"]
    ray = serve = None
    if served:
        try:
            import ray
            from ray import serve
        except ImportError:
            print("Ray Serve is not installed (pip install 'fexsdk[serve]'): service rows skipped")
            served = []
    url = None
    try:
        if served:
            from fexsdk.serve import make_app

            ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            url = f"http://127.0.0.1:{port}"
            for name in served:  # every configuration deployed at once, each under its own prefix
                replicas, batching = CONFIGS[name]
                options = {"device": "cpu", "threads": args.threads, "workers": args.workers,
                           "max_batch_size": args.max_batch if batching else 1, "batch_wait_s": args.batch_wait_ms / 1000}
                serve.run(make_app(options, num_replicas=replicas, ray_actor_options={"num_cpus": 0}),
                          name=f"load-{name}", route_prefix=f"/{name}", blocking=False)
                senders[name] = service_sender(f"{url}/{name}", images)
        for name, send in senders.items():  # warm-up: every replica, the batch queues
            for i in range(2 * args.clients if name != "plain" else len(images)):
                send(i)
        plain_counts.clear()
        # Rounds, the configurations interleaved in each: load from other jobs drifts over minutes
        # and should not favour the configuration that happened to run first.
        per_round = max(1, args.requests // args.rounds)
        for r in range(args.rounds):
            for name, send in senders.items():
                run_clients(send, r * per_round, per_round, 1 if name == "plain" else args.clients, tallies[name])
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{n} {t.result()['req_per_s']:.1f}" for n, t in tallies.items()) + " req/s so far", flush=True)
        results = {name: t.result() for name, t in tallies.items()}
        for name in served:
            with urllib.request.urlopen(f"{url}/{name}/stats", timeout=30) as resp:  # one replica's counters
                stats = json.loads(resp.read())
            results[name]["faces_per_generator_call"] = stats["faces"] / max(1, stats["generator_calls"])
            results[name]["largest_batch"] = stats["largest_batch"]
        if plain_counts:  # one generator call per image, with that image's faces
            results["plain"]["faces_per_generator_call"] = sum(plain_counts) / len(plain_counts)
            results["plain"]["largest_batch"] = max(plain_counts)
    finally:
        if served:
            serve.shutdown()
            ray.shutdown()

    labels = {"plain": "plain Transfer.apply loop, 1 process", "1-on": "serve, 1 replica, batching on",
              "1-off": "serve, 1 replica, batching off", "2-on": "serve, 2 replicas, batching on",
              "2-off": "serve, 2 replicas, batching off"}
    load_after = os.getloadavg()
    print(f"\nload average (1 min) before {load_before[0]:.1f}, after {load_after[0]:.1f} "
          f"(other jobs on the machine count in it)")
    print("| configuration | clients | req/s | faces/s | p50 ms | p95 ms | faces per generator call (largest) | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        clients = 1 if name == "plain" else args.clients
        batch = f"{r['faces_per_generator_call']:.1f} ({r['largest_batch']})" if "largest_batch" in r else "-"
        print(f"| {labels[name]} | {clients} | {r['req_per_s']:.1f} | {r['faces_per_s']:.1f} | {r['p50_ms']:.0f} | "
              f"{r['p95_ms']:.0f} | {batch} | {r['errors']} |")
    for name, r in results.items():
        if r["errors"]:
            print(f"{name}: first error: {r['first_error']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "cores": os.cpu_count(), "args": vars(args),
                                               "loadavg_before": load_before, "loadavg_after": load_after,
                                               "images": [n for n, _ in images], "results": results}, indent=2))
        print(f"wrote {args.json}")
    return 0 if all(r["errors"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
