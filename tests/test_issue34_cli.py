"""Issue 34: the command-line cases that lost data, were silently wrong, gave a traceback or misled.

Each row of CASES is (id, arguments, exit code, message fragment, files that must not change). The
fragments are also checked against docs/errors.md. Cases that need more than one command (or a
check of the files written) have their own tests below the table.
"""

from __future__ import annotations

import os
import shutil
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from fexsdk.cli import main
from tests.conftest import REPO

EXAMPLE = REPO / "docs" / "example.png"
ERRORS_MD = REPO / "docs" / "errors.md"


def fex(capsys, *args) -> tuple[int, str, str]:
    """Run `fex ARGS` in this process: (exit code, stdout, stderr)."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_huge_png(path: Path, side: int = 20000) -> None:
    """A valid 1-bit gray PNG of side x side pixels (a few hundred KB): decoding it takes GBs and seconds."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b""))


def write_gif(path: Path, frames: int) -> None:
    from PIL import Image

    images = [Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)) for i in range(frames)]
    images[0].save(path, save_all=frames > 1, append_images=images[1:], duration=100)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_checkpoint, tiny_onnx):
    d = tmp_path_factory.mktemp("issue34")
    run = d / "run"
    run.mkdir()
    shutil.copy(tiny_checkpoint, run / "last.pt")
    shutil.copy(tiny_checkpoint, run / "best.pt")
    shutil.copy(tiny_onnx, d / "m.onnx")
    data = (d / "m.onnx").read_bytes()
    (d / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (d / "existing_folder").mkdir()
    rng = np.random.default_rng(0)
    np.savez(d / "faces.npz", images=rng.integers(0, 256, (40, 48, 48), dtype=np.uint8), labels=np.arange(40) % 7,
             usage=np.array(["Training"] * 30 + ["PublicTest"] * 10))
    (d / "random.pt").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (d / "random.npz").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    write_gif(d / "anim.gif", 3)
    write_huge_png(d / "huge.png")
    os.mkfifo(d / "fifo")
    # A model whose metadata says 64x64 while its graph takes 48x48.
    import onnx

    from fexsdk.metadata import ONNX_KEY, ModelMetadata

    model = onnx.load(str(REPO / "fexsdk" / "models" / "default.onnx"))
    for prop in model.metadata_props:
        if prop.key == ONNX_KEY:
            meta = ModelMetadata.from_json(prop.value)
            meta.image_size = 64
            prop.value = meta.to_json()
    onnx.save(model, str(d / "bad_meta.onnx"))
    return d


# (id, arguments, exit code, message fragment, files that must come out unchanged). {d}: the fixture folder.
CASES = [
    ("export onnx: -o its own checkpoint", ["export", "onnx", "{d}/run/last.pt", "-o", "{d}/run/last.pt"], 2,
     "fex loads ONNX model files only as .onnx", ["run/last.pt"]),
    ("export onnx: -o another checkpoint", ["export", "onnx", "{d}/run/last.pt", "-o", "{d}/run/best.pt"], 2,
     "fex loads ONNX model files only as .onnx; name the output best.onnx", ["run/best.pt"]),
    ("export onnx: -o x.txt", ["export", "onnx", "{d}/run/last.pt", "-o", "{d}/x.txt"], 2,
     "fex loads ONNX model files only as .onnx; name the output x.onnx", []),
    ("export onnx: -o a folder", ["export", "onnx", "{d}/run/last.pt", "-o", "{d}/existing_folder"], 2,
     "is a folder; give the ONNX model file to write", []),
    ("export int8: -o its FP32 source", ["export", "int8", "{d}/m.onnx", "-o", "{d}/m.onnx", "--data", "{d}/faces.npz"],
     2, "is the source file", ["m.onnx"]),
    ("export int8: -o its FP32 source, spelt another way", ["export", "int8", "{d}/m.onnx", "-o",
                                                             "{d}/existing_folder/../m.onnx", "--data", "{d}/faces.npz"],
     2, "writing it would replace the file being exported", ["m.onnx"]),
    ("export int8: a truncated .onnx", ["export", "int8", "{d}/truncated.onnx", "-o", "{d}/q.onnx", "--data",
                                        "{d}/faces.npz"], 2, "is not a readable ONNX model (DecodeError)", []),
    ("export classifier: a random .pt", ["export", "classifier", "{d}/random.pt", "-o", "{d}/c.safetensors"], 2,
     "is not a readable classifier (UnpicklingError)", []),
    ("export classifier: -o x.pt", ["export", "classifier", "{d}/random.pt", "-o", "{d}/c.pt"], 2,
     "fex loads exported classifier files only as .safetensors", []),
    ("export engine: -o its ONNX source", ["export", "engine", "{d}/m.onnx", "-o", "{d}/m.onnx"], 2,
     "fex loads TensorRT engine files only as .engine or .plan", ["m.onnx"]),
    ("apply: -o out.exr (OpenEXR disabled in OpenCV)", ["apply", "{ex}", "-e", "happy", "-o", "{d}/out.exr"], 2,
     "OpenCV cannot write '.exr' images", []),
    ("apply: /dev/zero", ["apply", "/dev/zero", "-e", "happy", "-o", "{d}/o.png"], 2,
     "/dev/zero is a device, not an image file", []),
    ("apply: a FIFO", ["apply", "{d}/fifo", "-e", "happy", "-o", "{d}/o.png"], 2,
     "is a FIFO (named pipe), not an image file", []),
    ("apply: an animated GIF", ["apply", "{d}/anim.gif", "-e", "happy", "-o", "{d}/out.gif"], 2,
     "anim.gif holds 3 images (an animation or pages)", []),
    ("apply: a 20000x20000 PNG", ["apply", "{d}/huge.png", "-e", "happy", "-o", "{d}/o.png"], 2,
     "is 20000x20000, 400,000,000 pixels; the limit is 100,000,000", []),
    ("apply: metadata image_size disagrees with the graph", ["apply", "{ex}", "-e", "happy", "-o", "{d}/o.png",
                                                              "--model", "{d}/bad_meta.onnx"], 2,
     "but the graph takes ['batch', 1, 48, 48]", []),
    ("train: --data random.npz", ["train", "--data", "{d}/random.npz", "--out", "{d}/train_out", "--preset", "tiny"], 2,
     "cannot read", []),
    ("eval: --generator a misspelt bundled name", ["eval", "--generator", "wrap", "--classifier", "{d}/random.pt",
                                                   "--data", "{d}/faces.npz"], 2, "no bundled model named 'wrap'", []),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cli_case(case, files, capsys):
    _, args, code, fragment, unchanged = case
    before = {name: (files / name).read_bytes() for name in unchanged}
    args = [a.replace("{d}", str(files)).replace("{ex}", str(EXAMPLE)) for a in args]
    t0 = time.perf_counter()
    rc, out, err = fex(capsys, *args)
    assert rc == code, (rc, out, err)
    assert fragment in err, err
    assert "Traceback" not in err
    for name, data in before.items():
        assert (files / name).read_bytes() == data, f"{name} was changed"
    assert time.perf_counter() - t0 < 30


def test_messages_are_in_errors_md():
    text = ERRORS_MD.read_text()
    for case in CASES:
        assert case[3] in text, f"docs/errors.md does not quote {case[3]!r} ({case[0]})"


def test_huge_png_refused_from_its_header(files, capsys):
    """Refused in well under a second, before decoding (decoding took 8 s and 2.45 GB)."""
    from fexsdk.images import read_image

    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="20000x20000"):
        read_image(files / "huge.png")
    assert time.perf_counter() - t0 < 1.0


def test_train_random_npz_gives_no_unsafe_advice(files, capsys):
    rc, _, err = fex(capsys, "train", "--data", files / "random.npz", "--out", files / "train_out2", "--preset", "tiny")
    assert rc == 2 and "random.npz as an .npz archive" in err
    assert "pickle" not in err.lower() and "unsafe" not in err


def test_apply_single_image_folder_creates_output_folder(files, tmp_path, capsys):
    """One image in a folder (or one glob match) with -o newdir: newdir is created, as --help says."""
    onedir = tmp_path / "onedir"
    onedir.mkdir()
    shutil.copy(EXAMPLE, onedir / "base.png")
    for spec, out in ((onedir, tmp_path / "newdir"), (str(onedir / "*.png"), tmp_path / "globdir")):
        rc, stdout, err = fex(capsys, "apply", spec, "-e", "surprise", "-o", out)
        assert rc == 0, err
        assert (out / "base.png").is_file()
        assert "1 image(s) written to" in stdout


def test_apply_folder_counts_animated_gif_as_skipped(files, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(EXAMPLE, folder / "a.png")
    shutil.copy(files / "anim.gif", folder / "anim.gif")
    write_gif(folder / "still.gif", 1)
    rc, out, err = fex(capsys, "apply", folder, "-e", "happy", "-o", tmp_path / "out")
    assert rc == 1
    assert "2 image(s) written" in out and "1 skipped" in out
    assert "anim.gif holds 3 images" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "still.gif"]


def test_eval_takes_a_bundled_generator_name(files, capsys):
    rc, out, err = fex(capsys, "eval", "--generator", "warp", "--classifier",
                       REPO / "training" / "weights" / "resnet18_fer2013.safetensors", "--data", files / "faces.npz",
                       "--limit", "4", "--seeds", "0", "--device", "cpu")
    assert rc == 0, err
    assert "| warp" in out


def test_transfer_refuses_metadata_that_disagrees_with_graph(files):
    from fexsdk import Transfer

    with pytest.raises(ValueError, match=r"metadata says input 'image' is \(batch, 1, 64, 64\)"):
        Transfer(str(files / "bad_meta.onnx"))
