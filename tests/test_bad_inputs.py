"""Every careless input found so far gets a clear error, a refusal or the correct output (docs/errors.md).

Each table row is (id, arguments, expected exit code, a fragment of the message). The message
fragments are also checked against docs/errors.md, so the catalogue cannot drift from the code.
"""

from __future__ import annotations

import argparse
import re
import shutil

import cv2
import numpy as np
import pytest

from fexsdk.cli import build_parser, main
from tests.conftest import REPO

EXAMPLE = REPO / "docs" / "example.png"
BUNDLED = REPO / "fexsdk" / "models" / "default.onnx"
ERRORS_MD = REPO / "docs" / "errors.md"


def fex(capsys, *args):
    """Run `fex ARGS` in this process: (exit code, stdout, stderr)."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    img = cv2.imread(str(EXAMPLE))
    (d / "folder").mkdir()
    (d / "a_file").write_text("not a folder")
    # A small video: 30 frames of a face scene, and the same file cut in half.
    face = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), (160, 120))
    w = cv2.VideoWriter(str(d / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for i in range(30):
        w.write(cv2.cvtColor(np.roll(face, i, axis=1), cv2.COLOR_GRAY2BGR))
    w.release()
    data = (d / "clip.avi").read_bytes()
    (d / "truncated.avi").write_bytes(data[: len(data) // 2])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (80, 48, 48), dtype=np.uint8)
    np.savez(d / "no_usage.npz", images=images, labels=np.arange(80) % 7)
    np.savez(d / "usage_names.npz", images=images, labels=np.arange(80) % 7,
             usage=np.array(["Training"] * 60 + ["PublicTest"] * 10 + ["privatetest"] * 10))
    return d


# (id, arguments, exit code, message fragment). {d} is the fixture folder, {ex} docs/example.png.
CLI_CASES = [
    ("apply: -e intensity above 1", ["apply", "{ex}", "-e", "happy=2", "-o", "{d}/o.png"], 2,
     "must be a number in [0, 1]"),
    ("apply: -e emotion given twice", ["apply", "{ex}", "-e", "happy=0.5,happy=0.5", "-o", "{d}/o.png"], 2,
     "is given twice"),
    ("apply: -e alias of an emotion already given", ["apply", "{ex}", "-e", "happy=0.5,joy=0.2", "-o", "{d}/o.png"], 2,
     "name the same emotion"),
    ("apply: -e intensities adding up to more than 1", ["apply", "{ex}", "-e", "happy=0.7,sad=0.6", "-o", "{d}/o.png"],
     2, "must add up to at most 1"),
    ("apply: --strength above 2", ["apply", "{ex}", "-e", "happy", "-o", "{d}/o.png", "--strength", "100"], 2,
     "argument --strength: must be a number in [0, 2]"),
    ("apply: --seed negative", ["apply", "{ex}", "-e", "happy", "-o", "{d}/o.png", "--seed", "-5"], 2,
     "argument --seed: must be an integer >= 0"),
    ("apply: -o with an unknown extension", ["apply", "{ex}", "-e", "happy", "-o", "{d}/out.xyz"], 2,
     "OpenCV cannot write '.xyz' images"),
    ("apply: -o without an extension", ["apply", "{ex}", "-e", "happy", "-o", "{d}/out"], 2, "has no extension"),
    ("apply: -o in a missing folder", ["apply", "{ex}", "-e", "happy", "-o", "{d}/missing/out.png"], 2,
     "output folder does not exist"),
    ("apply: -o a folder", ["apply", "{ex}", "-e", "happy", "-o", "{d}/folder"], 2, "is a folder; give a file name"),
    ("apply: -o the input image", ["apply", "{d}/copy.png", "-e", "happy", "-o", "{d}/copy.png"], 2,
     "is the input image"),
    ("apply: a folder as the image", ["apply", "{d}/folder", "-e", "happy", "-o", "{d}/o.png"], 2,
     "is a folder, not an image file"),
    ("apply: --detector an ONNX file that is not YuNet",
     ["apply", "{ex}", "-e", "happy", "-o", "{d}/o.png", "--detector", str(BUNDLED)], 2, "is not a YuNet face detector"),
    ("apply: --threads 0", ["apply", "{ex}", "-e", "happy", "-o", "{d}/o.png", "--threads", "0"], 2,
     "argument --threads: must be an integer >= 1"),
    ("grid: --cell 0", ["grid", "{ex}", "-o", "{d}/g.png", "--cell", "0"], 2,
     "argument --cell: must be an integer from 16 to 2048"),
    ("grid: --cell -5", ["grid", "{ex}", "-o", "{d}/g.png", "--cell", "-5"], 2,
     "argument --cell: must be an integer from 16 to 2048"),
    ("demo: --output is the --input video", ["demo", "--input", "{d}/clip.avi", "--output", "{d}/clip.avi"], 2,
     "is the --input video"),
    ("demo: a truncated video", ["demo", "--input", "{d}/truncated.avi", "--output", "{d}/t_out.avi", "--no-overlay"], 1,
     "the file is truncated or damaged"),
    ("demo: --strength above 2", ["demo", "--input", "{d}/clip.avi", "--output", "{d}/o.avi", "--strength", "1e308"], 2,
     "argument --strength: must be a number in [0, 2]"),
    ("train: --epochs 0", ["train", "--synthetic", "64", "--out", "{d}/t0", "--epochs", "0"], 2,
     "argument --epochs: must be a number > 0"),
    ("train: --epochs -1", ["train", "--synthetic", "64", "--out", "{d}/t0", "--epochs", "-1"], 2,
     "argument --epochs: must be a number > 0"),
    ("train: --out a file", ["train", "--preset", "tiny", "--synthetic", "64", "--out", "{d}/a_file"], 2,
     "is a file; give a folder"),
    ("train: --out holding another run", ["train", "--preset", "tiny", "--synthetic", "64", "--out", "{d}/used"], 2,
     "already holds files"),
    ("eval: --limit 0", ["eval", "--classifier", "c.safetensors", "--data", "{d}/usage_names.npz", "--limit", "0"], 2,
     "argument --limit: must be an integer >= 1"),
    ("eval: --out a file", ["eval", "--classifier", "c.safetensors", "--data", "{d}/usage_names.npz",
                            "--out", "{d}/a_file"], 2, "is a file; give a folder"),
]


def _fill(args, d):
    return [a.replace("{d}", str(d)).replace("{ex}", str(EXAMPLE)) for a in args]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(case, files, capsys, monkeypatch):
    name, args, code, fragment = case
    if args[0] in ("train", "eval") and "argument" not in fragment:
        pytest.importorskip("torch")
    if name.endswith("the input image"):
        shutil.copy(EXAMPLE, files / "copy.png")
    if name.endswith("another run"):
        (files / "used").mkdir(exist_ok=True)
        (files / "used" / "last.pt").write_bytes(b"an earlier run's checkpoint")
    before = {p: p.read_bytes() for p in files.rglob("*") if p.is_file()}
    if code == 2 and args[0] in ("apply", "grid") and "detector" not in name:
        # Refused before any work: loading the model would fail this test.
        import fexsdk.transfer

        def no_work(*a, **k):
            raise AssertionError("the model was loaded before the bad input was refused")

        monkeypatch.setattr(fexsdk.transfer.Transfer, "__init__", no_work)
    rc, out, err = fex(capsys, *_fill(args, files))
    assert rc == code, f"exit {rc}: {err}"
    assert fragment in err, err
    assert "Traceback" not in err
    # Nothing that was there has changed (a refused command writes nothing over anything).
    for p, content in before.items():
        assert p.read_bytes() == content, f"{p} was changed"


def test_catalogue_lists_every_message():
    text = ERRORS_MD.read_text()
    missing = [c[3] for c in CLI_CASES if c[3] not in text] + [m for _, _, _, m in API_CASES if m not in text]
    assert not missing, f"docs/errors.md lacks: {missing}"


# -- the Python API ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tr():
    from fexsdk.transfer import Transfer

    # IMG is a flat gray square, not a face: the check that leaves blurred faces alone would skip it.
    return Transfer("paint", device="cpu", threads=1, skip_unsuitable=False)  # a flat image: a warp model moves nothing


IMG = np.full((200, 200, 3), 120, np.uint8)
BOX = [(50, 50, 100, 100)]
API_CASES = [
    ("target None", lambda tr: tr.apply(IMG, None, faces=BOX), ValueError, "a target is an emotion name"),
    ("target 3.0", lambda tr: tr.apply(IMG, 3.0, faces=BOX), ValueError, "a target is an emotion name"),
    ("target list with None", lambda tr: tr.apply(IMG, [None], faces=BOX), ValueError, "a target is an emotion name"),
    ("seed 'abc'", lambda tr: tr.apply(IMG, "happy", faces=BOX, seed="abc"), ValueError, "seed must be an integer >= 0"),
    ("seed b'x'", lambda tr: tr.apply(IMG, "happy", faces=BOX, seed=b"x"), ValueError, "seed must be an integer >= 0"),
    ("seed [None, None]", lambda tr: tr.apply(IMG, "happy", faces=BOX * 2, seed=[None, None]), ValueError,
     "seed must be an integer >= 0"),
    ("seed -5", lambda tr: tr.apply(IMG, "happy", faces=BOX, seed=-5), ValueError, "seed must be an integer >= 0"),
    ("seed list of the wrong length", lambda tr: tr.apply(IMG, "happy", faces=BOX, seed=[1, 2, 3]), ValueError,
     "got 3 seeds for 1 faces"),
    ("strength 1e308", lambda tr: tr.apply(IMG, "happy", faces=BOX, strength=1e308), ValueError,
     "strength must be a number in [0, 2]"),
    ("strength 100", lambda tr: tr.apply(IMG, "happy", faces=BOX, strength=100), ValueError,
     "strength must be a number in [0, 2]"),
    ("face box far larger than the image", lambda tr: tr.apply(IMG, "happy", faces=[(0, 0, 1e9, 1e9)]), ValueError,
     "is larger than 4x the image"),
    ("face box outside the image", lambda tr: tr.apply(IMG, "happy", faces=[(500, 500, 50, 50)]), ValueError,
     "lies outside the"),
    ("face box with inf", lambda tr: tr.apply(IMG, "happy", faces=[(0, 0, float("inf"), 10)]), ValueError,
     "must be finite numbers"),
    ("Transfer(threads='2')", lambda tr: type(tr)(threads="2"), ValueError, "threads must be an integer >= 1"),
    ("Transfer(threads=-1)", lambda tr: type(tr)(threads=-1), ValueError, "threads must be an integer >= 1"),
    ("Transfer(model=123)", lambda tr: type(tr)(model=123), ValueError, "model must be a path to a model file"),
    ("Transfer(model=a folder)", lambda tr: type(tr)(model=REPO), ValueError, "is a folder; give the model file"),
    ("Transfer(device=5)", lambda tr: type(tr)(device=5), ValueError, "device must be one of"),
    ("Transfer(align='yes')", lambda tr: type(tr)(align="yes"), ValueError, "align must be True (turn crops so the eyes are level) or False"),
    ("intensity 2", lambda tr: tr.apply(IMG, {"happy": 2}, faces=BOX), ValueError, "must be a number in [0, 1]"),
    ("intensity as text", lambda tr: tr.apply(IMG, {"happy": "0.5"}, faces=BOX), ValueError, "must be a number"),
    # No face in IMG: the targets are still checked, not skipped with the paste-back.
    ("misspelt emotion, no face found", lambda tr: tr.apply(IMG, "happyy"), ValueError, "unknown emotion 'happyy'"),
    ("intensities over 1, no face found", lambda tr: tr.apply(IMG, {"happy": 0.7, "sad": 0.6}), ValueError,
     "must add up to at most 1"),
    ("bad name in a list, no face found", lambda tr: tr.apply(IMG, ["happy", "nope"]), ValueError,
     "unknown emotion 'nope'"),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(case, tr):
    _, call, exc, fragment = case
    with pytest.raises(exc) as info:
        call(tr)
    assert fragment in str(info.value)


def test_a_face_free_image_comes_back_unchanged_for_a_good_target(tr):
    out, faces = tr.apply(IMG, "happy", return_faces=True)
    assert faces == [] and np.array_equal(out, IMG)


def test_api_good_inputs_still_work(tr):
    a = tr.apply(IMG, "happy", faces=BOX, seed=3)
    assert np.array_equal(a, tr.apply(IMG, 3, faces=BOX, seed=3))  # index 3 is happy
    assert np.array_equal(a, tr.apply(IMG, "3", faces=BOX, seed=3))
    assert np.array_equal(a, tr.apply(IMG, "happy", faces=BOX, seed=np.int64(3)))
    assert np.array_equal(tr.apply(IMG, ["happy", "sad"], faces=BOX * 2, seed=[4, 5]),
                          tr.apply(IMG, ["happy", "sad"], faces=BOX * 2, seed=(4, 5)))
    half = tr.apply(IMG, {"happy": 0.5, "surprise": 0.5}, faces=BOX, seed=3)
    assert half.shape == IMG.shape and not np.array_equal(half, a)
    # A box a little larger than the image (a close-up face) is fine.
    assert tr.apply(IMG, "happy", faces=[(-20, -20, 240, 240)], seed=0).shape == IMG.shape


# -- outputs that are correct now ---------------------------------------------------------------------

def test_apply_accepts_an_emotion_index(files, capsys):
    rc3, out3, _ = fex(capsys, "apply", EXAMPLE, "-e", "3", "-o", files / "idx.png")
    rch, _, _ = fex(capsys, "apply", EXAMPLE, "-e", "happy", "-o", files / "name.png")
    assert rc3 == rch == 0 and "changed to happy" in out3
    assert (files / "idx.png").read_bytes() == (files / "name.png").read_bytes()


@pytest.mark.parametrize("kind", ["16-bit PNG", "16-bit TIFF", "float TIFF"])
def test_16_bit_and_float_images_are_converted(kind, files, capsys):
    img = cv2.imread(str(EXAMPLE))
    if kind == "float TIFF":
        src, data = files / "f32.tif", img.astype(np.float32) / 255.0
    else:
        src, data = files / f"u16{'.png' if 'PNG' in kind else '.tif'}", img.astype(np.uint16) * 257
    assert cv2.imwrite(str(src), data)
    assert cv2.imread(str(src), cv2.IMREAD_UNCHANGED).dtype == data.dtype
    rc, _, err = fex(capsys, "apply", src, "-e", "surprise", "-o", files / "conv.png")
    rc8, _, _ = fex(capsys, "apply", EXAMPLE, "-e", "surprise", "-o", files / "ref.png")
    assert rc == rc8 == 0, err
    assert np.array_equal(cv2.imread(str(files / "conv.png")), cv2.imread(str(files / "ref.png")))


def test_float_image_outside_0_1_is_refused(files, capsys):
    src = files / "hdr.tif"
    assert cv2.imwrite(str(src), np.full((64, 64, 3), 200.0, np.float32))
    rc, _, err = fex(capsys, "apply", src, "-e", "happy", "-o", files / "o.png")
    assert rc == 2 and "outside [0, 1]" in err


def test_demo_refusal_leaves_the_input_video_intact(files, capsys):
    before = (files / "clip.avi").read_bytes()
    rc, _, err = fex(capsys, "demo", "--input", files / "clip.avi", "--output", files / "." / "clip.avi")
    assert rc == 2 and "is the --input video" in err
    assert (files / "clip.avi").read_bytes() == before
    n = 0
    cap = cv2.VideoCapture(str(files / "clip.avi"))
    while cap.read()[0]:
        n += 1
    assert n == 30


def test_demo_whole_video_exits_0_and_truncated_exits_1(files, capsys):
    rc, out, err = fex(capsys, "demo", "--input", files / "clip.avi", "--output", files / "whole.avi", "--no-overlay")
    assert rc == 0 and "30 frames" in out and "truncated" not in err
    rc, out, err = fex(capsys, "demo", "--input", files / "truncated.avi", "--output", files / "part.avi")
    assert rc == 1 and "of the 30 frames its header announces" in err


def test_random_pt_as_model_is_short_and_clear(files, capsys):
    torch = pytest.importorskip("torch")
    torch.save(torch.nn.Linear(2, 2), files / "module.pt")  # a pickled object: weights_only refuses it
    (files / "junk.pt").write_bytes(b"random bytes")
    for bad in ("module.pt", "junk.pt"):
        rc, _, err = fex(capsys, "apply", EXAMPLE, "-e", "happy", "-o", files / "o.png", "--model", files / bad)
        assert rc == 2 and "is not a readable fexsdk checkpoint" in err, err
        assert "weights_only" not in err and "Weights only" not in err and len(err) < 400, err


def test_classifier_given_the_onnx_generator(files, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    rc, _, err = fex(capsys, "eval", "--classifier", BUNDLED, "--data", files / "usage_names.npz")
    assert rc == 2 and "is an ONNX model (a generator goes to --generator)" in err, err
    (files / "notes.pt").write_bytes(b"not a classifier")
    rc, _, err = fex(capsys, "eval", "--classifier", files / "notes.pt", "--data", files / "usage_names.npz")
    assert rc == 2 and "is not a readable classifier" in err and "Traceback" not in err, err


def test_npz_usage_names_are_accepted(files):
    from fexsdk.training.data import load_dataset

    assert len(load_dataset(files / "usage_names.npz", "train")) == 60
    assert len(load_dataset(files / "usage_names.npz", "public")) == 10
    assert len(load_dataset(files / "usage_names.npz", "private")) == 10
    np.savez(files / "bad_names.npz", images=np.zeros((2, 48, 48), np.uint8), labels=[0, 1], usage=["Training", "Dev"])
    with pytest.raises(ValueError, match="'Dev' is not one of Training, PublicTest, PrivateTest"):
        load_dataset(files / "bad_names.npz", "train")


def test_train_on_an_npz_without_usage(files, capsys):
    pytest.importorskip("torch")
    out = files / "no_usage_run"
    with pytest.warns(UserWarning, match="training on all 80 images"):
        rc, _, err = fex(capsys, "train", "--preset", "tiny", "--data", files / "no_usage.npz", "--out", out,
                         "--max-steps", "2", "--batch-size", "4", "--no-progress", "--threads", "1")
    assert rc == 0, err
    assert (out / "last.pt").is_file()


def test_train_overwrite_and_resume_are_the_ways_into_a_used_out(files, capsys):
    pytest.importorskip("torch")
    from fexsdk.training.checkpoint import load_checkpoint

    out = files / "twice"
    common = ["train", "--preset", "tiny", "--synthetic", "64", "--out", out, "--batch-size", "4", "--no-progress",
              "--threads", "1", "--ckpt-every", "2"]
    assert fex(capsys, *common, "--max-steps", "2")[0] == 0
    first = (out / "last.pt").read_bytes()
    rc, _, err = fex(capsys, *common, "--max-steps", "4")
    assert rc == 2 and "already holds files" in err and (out / "last.pt").read_bytes() == first
    rc, _, err = fex(capsys, *common, "--max-steps", "4", "--resume", "--overwrite")
    assert rc == 2 and "not both" in err
    assert fex(capsys, *common, "--max-steps", "4", "--resume")[0] == 0
    assert load_checkpoint(out / "last.pt")["step"] == 4
    assert fex(capsys, *common, "--max-steps", "2", "--overwrite")[0] == 0
    assert load_checkpoint(out / "last.pt")["step"] == 2  # a fresh run replaced it
    steps = [int(line.split(",")[0]) for line in (out / "scalars.csv").read_text().splitlines()[1:]]
    assert max(steps) == 2


def test_train_config_checks_in_python(tmp_path):
    pytest.importorskip("torch")
    from fexsdk.training.trainer import TrainConfig

    for kw, match in [({"epochs": 0}, "epochs"), ({"epochs": -1.0}, "epochs"), ({"max_steps": 0}, "max_steps"),
                      ({"seed": -5}, "seed"), ({"ckpt_every": 0}, "ckpt_every")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(synthetic=64, out=str(tmp_path / "x"), **kw).validate()


# -- help text -------------------------------------------------------------------------------------------

def _parsers(parser: argparse.ArgumentParser, name: str = "fex"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_option_has_help_text():
    missing = []
    for name, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not (action.help and action.help.strip()):
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"options without help text: {missing}"
    text = build_parser().format_help()
    assert re.search(r"\bapply\b", text) and re.search(r"\bdemo\b", text)
