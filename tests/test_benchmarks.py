"""benchmarks/latency.py end to end on the tiny model, and the int8 model it makes (fexsdk.export.quantize)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest

from tests.conftest import REPO

pytest.importorskip("onnx")

CPU_BACKENDS = ("torch-cpu", "ort-cpu", "ort-cpu-int8")
GPU_BACKENDS = ("torch-cuda", "torch-cuda-graph", "ort-cuda", "trt-fp32", "trt-fp16")
STAGES = ("decode", "detect", "crop", "generate", "paste")


@pytest.fixture(scope="module")
def bench(tiny_onnx, tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("latency")
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "latency.py"),
        "--model", str(tiny_onnx), "--checkpoint", str(tiny_checkpoint),
        "--batch-sizes", "1", "4", "--iters", "3", "--min-iters", "2", "--warmup", "1", "--max-seconds", "1",
        "--pipeline-iters", "2", "--pipeline-backends", "ort-cpu", "--calib-count", "32", "--parity-count", "8",
        # One thread: on a shared CI machine two spinning OpenMP threads can make PyTorch 100x slower.
        "--threads", "1",
        "--json", str(out / "latency.json"), "--keep-models", str(out / "models"),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"latency.py failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads((out / "latency.json").read_text()), proc.stdout, out


def _tiny_macs(cfg: dict) -> int:
    """Multiply-adds of the generator's convolutions per face, from its config (the architecture in training/models.py)."""
    d, s, c = cfg["conv_dim"], cfg["image_size"], cfg["in_channels"]
    q, h = s // 4, s // 2
    macs = s * s * d * (c + cfg["label_dim"]) * 49  # stem 7x7
    macs += h * h * 2 * d * d * 16 + q * q * 4 * d * 2 * d * 16  # two stride-2 4x4 convs
    macs += cfg["n_res"] * 2 * q * q * 4 * d * 4 * d * 9  # residual 3x3 pairs
    macs += q * q * 4 * d * 2 * d * 16 + h * h * 2 * d * d * 16  # transposed convs, counted per input pixel
    macs += s * s * c * d * 49  # head 7x7
    return macs


def test_rows_for_every_backend_available_here(bench):
    res, stdout, _ = bench
    rows = res["rows"]
    for key in CPU_BACKENDS:
        got = {r["batch"]: r for r in rows if r["backend"] == key}
        assert sorted(got) == [1, 4], f"{key}: {sorted(got)}"
        for r in got.values():
            assert r["device"] == "cpu" and r["iters"] >= 2
            assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p95_ms"]
            assert r["faces_per_s"] == pytest.approx(r["batch"] / (r["p50_ms"] / 1000))
            assert r["speedup_vs_torch_eager"] > 0
    assert {r["precision"] for r in rows if r["backend"] == "ort-cpu-int8"} == {"int8"}
    assert all(r["speedup_vs_torch_eager"] == pytest.approx(1.0) for r in rows if r["backend"] == "torch-cpu")
    for key in ("torch-cpu", "ort-cpu", "ort-cpu-int8"):
        assert key in stdout
    assert res["machine"]["cpu"]["name"] and res["machine"]["cpu"]["usable_cpus"] >= 1


def test_gpu_backends_run_or_say_why_not(bench):
    import onnxruntime as ort
    import torch

    res, stdout, _ = bench
    skipped = {s["backend"]: s["reason"] for s in res["skipped"]}
    timed = {r["backend"] for r in res["rows"]}
    for key in GPU_BACKENDS:
        assert (key in timed) != (key in skipped), key
        if key in skipped:
            assert len(skipped[key]) > 10 and key in stdout
    if not torch.cuda.is_available():
        assert "CUDA" in skipped["torch-cuda"] and "torch-cuda-graph" in skipped
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "CUDAExecutionProvider" in skipped["ort-cuda"]
    try:
        from fexsdk._trt import import_tensorrt

        import_tensorrt()
    except ImportError:
        for key in ("trt-fp32", "trt-fp16"):
            assert "TensorRT" in skipped[key]
    assert "skipped:" in stdout


def test_flops_match_the_architecture(bench, tiny_checkpoint):
    from fexsdk.training.checkpoint import load_checkpoint

    res, _, _ = bench
    cfg = load_checkpoint(tiny_checkpoint)["generator_config"]
    assert res["flops"]["macs"] == _tiny_macs(cfg)
    assert res["flops"]["flops"] == 2 * res["flops"]["macs"] and not res["flops"]["unknown_layers"]
    cpu = res["peaks"]["cpu"]
    assert cpu["gflops"] > 0 and cpu["bound_faces_per_s"] == pytest.approx(cpu["gflops"] * 1e9 / res["flops"]["flops"])


def test_parity_and_pipeline_stages(bench):
    res, stdout, _ = bench
    assert res["parity_reference"] == "ort-cpu"
    assert res["parity"]["torch-cpu"]["max_abs"] < 1e-4
    q = res["parity"]["ort-cpu-int8"]
    # 7-bit weights (reduce_range): measured 0.129 on AVX-512 VNNI and on AVX2 (Haswell under qemu); 8-bit
    # weights gave 0.121 on VNNI but 0.845 on AVX2, where onnxruntime's int16 accumulation saturates.
    assert 0 < q["mean_abs"] <= q["max_abs"] < 0.3 and math.isfinite(q["max_abs"])
    assert res["quantization"]["parity_vs_fp32"] == q
    assert "parity vs ort-cpu" in stdout

    (pipe,) = res["pipeline"]
    assert pipe["backend"] == "ort-cpu"
    configs = {(r["width"], r["height"], r["faces"]) for r in pipe["rows"]}
    assert configs == {(640, 480, 1), (640, 480, 4), (1280, 720, 1), (1280, 720, 4)}
    for r in pipe["rows"]:
        assert set(r["stages_ms"]) == set(STAGES)
        assert all(r["stages_ms"][s] > 0 for s in STAGES)
        assert r["fps"] > 0 and r["total"]["p50_ms"] >= max(r["stages_ms"].values())
    assert "synthetic" in pipe["frames"]  # no --data: the frames are made up and say so


def test_int8_model_keeps_metadata_and_loads_in_transfer(bench, tiny_onnx):
    import onnx

    from fexsdk.metadata import ONNX_KEY, ModelMetadata
    from fexsdk.export.quantize import QUANT_KEY
    from fexsdk.transfer import Transfer

    res, _, out = bench
    (int8,) = sorted((out / "models").glob("*.int8.onnx"))
    assert res["quantization"]["path"] == str(int8)
    model = onnx.load(str(int8))
    props = {p.key: p.value for p in model.metadata_props}
    qmeta, fmeta = ModelMetadata.from_json(props[ONNX_KEY]), Transfer(tiny_onnx).meta
    assert qmeta.precision == "int8"
    assert {**asdict(qmeta), "precision": "fp32"} == asdict(fmeta)
    assert json.loads(props[QUANT_KEY])["format"] == "QDQ"
    assert json.loads(props[QUANT_KEY])["weights"] == "int7 (reduce_range)"
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)

    t8, t32 = Transfer(int8, device="cpu"), Transfer(tiny_onnx, device="cpu")
    assert t8.meta.noise_size == t32.meta.noise_size > 0
    crops = np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    a, b = t8.generate(crops, "happy", seed=1), t32.generate(crops, "happy", seed=1)
    assert a.shape == b.shape == crops.shape and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b).mean() < 12
    img = np.full((120, 160, 3), 90, np.uint8)
    result = t8.apply(img, "sad", faces=[(40, 20, 80, 80)], seed=0)
    assert result.shape == img.shape


_AVX2_SCRIPT = """
import sys, numpy as np, onnxruntime as ort
d = np.load(sys.argv[2])
o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.log_severity_level = 3
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
np.save(sys.argv[3], s.run(["output"], {k: d[k] for k in d.files})[0])
"""


def test_int8_output_is_the_same_on_an_avx2_cpu(bench, tiny_onnx, tmp_path):
    """The int8 model on an emulated AVX2-only CPU (no AVX-512, no VNNI) gives this CPU's int8 output.

    onnxruntime's U8S8 kernels for CPUs without VNNI add products in saturating int16; with 8-bit
    weights that made the output wrong by up to 0.85 there. Needs qemu-user (apt-get install qemu-user).
    """
    import shutil

    import onnxruntime as ort

    from fexsdk.metadata import read_onnx_metadata
    from fexsdk.noise import noise_for

    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.skip("qemu-x86_64 not installed (apt-get install qemu-user): cannot emulate an AVX2-only CPU")
    _, _, out = bench
    (int8,) = sorted((out / "models").glob("*.int8.onnx"))
    meta = read_onnx_metadata(tiny_onnx)
    import importlib.util

    spec = importlib.util.spec_from_file_location("fex_latency", REPO / "benchmarks" / "latency.py")
    latency = sys.modules.setdefault("fex_latency", importlib.util.module_from_spec(spec))
    spec.loader.exec_module(latency)
    x = meta.to_model(latency.synthetic_faces(4, 48, seed=2)[:, None])  # the parity faces
    feeds = {"image": x, "label": meta.label_for(np.eye(7, dtype=np.float32)[[0, 3, 5, 6]]),
             "noise": noise_for(meta, 0, range(4))}
    np.savez(tmp_path / "in.npz", **feeds)
    (tmp_path / "run.py").write_text(_AVX2_SCRIPT)
    proc = subprocess.run([qemu, "-cpu", "Haswell", sys.executable, str(tmp_path / "run.py"), str(int8),
                           str(tmp_path / "in.npz"), str(tmp_path / "avx2.npy")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    avx2 = np.load(tmp_path / "avx2.npy")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    here = ort.InferenceSession(str(int8), opts, providers=["CPUExecutionProvider"]).run(["output"], feeds)[0]
    fp32 = ort.InferenceSession(str(tiny_onnx), opts, providers=["CPUExecutionProvider"]).run(["output"], feeds)[0]
    assert np.abs(avx2 - here).max() < 1e-3
    assert np.abs(avx2 - fp32).max() < 0.3


def test_quantize_refuses_bad_calibration_crops(tiny_onnx, tmp_path):
    from fexsdk.export.quantize import quantize_onnx

    with pytest.raises(ValueError, match="shape"):
        quantize_onnx(tiny_onnx, tmp_path / "q.onnx", np.zeros((4, 32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        quantize_onnx(tiny_onnx, tmp_path / "q.onnx", np.full((4, 48, 48), 3.0, np.float32))
    with pytest.raises(ValueError, match="at least one"):
        quantize_onnx(tiny_onnx, tmp_path / "q.onnx", np.zeros((0, 48, 48), np.uint8))


def _bench_module(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"fex_{name}", REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_template_share_tells_a_fixed_pattern_from_face_specific_changes(tiny_onnx):
    cm = _bench_module("change_map")
    rng = np.random.default_rng(0)
    pattern = rng.normal(size=(1, 1, 8, 8))
    assert cm.template_share(np.repeat(pattern, 50, axis=0)) == pytest.approx(1.0)
    own = rng.normal(size=(2000, 1, 8, 8))  # independent changes: the mean explains about 1/N
    assert cm.template_share(own) < 0.01
    half = np.repeat(pattern, 2000, axis=0) + own  # as much template as face-specific energy
    assert 0.4 < cm.template_share(half) < 0.6
    assert cm.template_share(np.zeros((3, 4, 4))) == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        cm.template_share(pattern)
    # On a real (tiny) model: 7 targets' changes, and a picture with a column per target.
    from fexsdk.backends import load_backend

    side = load_backend(str(tiny_onnx), device="cpu").meta.image_size
    x = rng.uniform(-1, 1, (5, 1, side, side)).astype(np.float32)
    ch = cm.changes(str(tiny_onnx), x)
    assert ch.shape == (7, 5, 1, side, side) and np.abs(ch).max() > 0
    pic = cm.change_map_picture(ch, scale=2)
    assert pic.dtype == np.uint8 and pic.shape == (14 + 2 * side * 2, 7 * side * 2)


def test_mean_face_distance_is_zero_for_the_real_mean_and_grows_with_a_painted_pattern():
    cm = _bench_module("change_map")
    rng = np.random.default_rng(1)
    faces = rng.uniform(-1, 1, (40, 1, 6, 6))
    real_mean = faces.mean(axis=0)
    assert cm.mean_face_distance(faces, real_mean) == pytest.approx(0.0, abs=1e-9)
    # The same pattern (0.2 in [-1, 1] units = 25.5 grey levels) added to every face moves the mean by it.
    assert cm.mean_face_distance(faces + 0.2, real_mean) == pytest.approx(0.2 * 127.5)
    # Face-specific changes with zero mean leave the mean face where it was.
    signs = np.where(np.arange(40) % 2 == 0, 1.0, -1.0)[:, None, None, None]
    assert cm.mean_face_distance(faces + 0.3 * signs, real_mean) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="generated must be"):
        cm.mean_face_distance(faces[0], real_mean)


def test_discriminator_reads_on_a_hand_checkable_discriminator(tiny_checkpoint, tmp_path):
    """A D that always answers "happy" reads the real happy share and exactly the happy fakes."""
    torch = pytest.importorskip("torch")
    from benchmarks.discriminator_reads import discriminator_reads, load_pair

    class AlwaysHappy(torch.nn.Module):
        def forward(self, x):
            logits = torch.zeros(len(x), 7)
            logits[:, 3] = 1
            return torch.zeros(len(x), 1), logits

    _, G = load_pair(tiny_checkpoint)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 1, 48, 48), dtype=np.uint8)
    labels = np.array([3] * 5 + [0] * 15)
    r = discriminator_reads(AlwaysHappy(), G, images, labels, n_fakes=6)
    assert r.real == pytest.approx(0.25)
    assert r.fakes_per_target == {e: (1.0 if e == "happy" else 0.0) for e in r.fakes_per_target}
    assert r.fakes == pytest.approx(1 / 7)
    D, _ = load_pair(tiny_checkpoint)  # the checkpoint's own D gives fractions of the same images
    own = discriminator_reads(D, G, images, labels, n_fakes=6)
    assert 0 <= own.real <= 1 and len(own.fakes_per_target) == 7

    from fexsdk.training.checkpoint import load_checkpoint, save_checkpoint

    slim = {k: v for k, v in load_checkpoint(tiny_checkpoint).items() if k != "D"}
    save_checkpoint(tmp_path / "slim.pt", slim)
    with pytest.raises(ValueError, match="no discriminator"):
        load_pair(tmp_path / "slim.pt")
