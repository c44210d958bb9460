"""Reading image files (fexsdk.images): EXIF orientation, truncated files, and `fex apply` on many images."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import cv2
import numpy as np
import pytest

from fexsdk import cli
from fexsdk.faces import box_iou
from fexsdk.images import (
    TruncatedImageWarning,
    apply_orientation,
    exif_orientation,
    expand_inputs,
    output_names,
    read_image,
    truncation,
)


def exif_app1(orientation: int, order: bytes = b"MM") -> bytes:
    """A JPEG APP1 segment holding only an EXIF Orientation tag (built by hand, no Pillow)."""
    end = ">" if order == b"MM" else "<"
    tiff = order + struct.pack(end + "HI", 42, 8) + struct.pack(end + "H", 1)
    tiff += struct.pack(end + "HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(end + "I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def jpeg_with_orientation(stored: np.ndarray, orientation: int, order: bytes = b"MM") -> bytes:
    data = cv2.imencode(".jpg", stored, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    return data[:2] + exif_app1(orientation, order) + data[2:]


@pytest.fixture(scope="module")
def photo():
    """An upright BGR photo with one face: scikit-image's astronaut, or FER2013 faces on a textured background."""
    try:
        import skimage.data

        return cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    except ImportError:
        from tests.conftest import FER_NPZ, face_scene

        if not FER_NPZ.is_file():
            pytest.skip("needs scikit-image or ../shared/data/fer2013.npz")
        with np.load(FER_NPZ) as d:
            faces = d["images"][np.flatnonzero(d["usage"] == 1)[:1]]
        return face_scene(faces, size=150, canvas=(480, 720))[0]


@pytest.fixture(scope="module")
def tr():
    from fexsdk.transfer import Transfer

    return Transfer(device="cpu", threads=1)  # the bundled model and the bundled YuNet


# --------------------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_turns_every_case_upright(orientation, tmp_path):
    """Store an upright image the way orientation N says, then read it back: it must be upright again."""
    rng = np.random.default_rng(orientation)
    upright = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    # What a camera stores for each orientation (the inverse of the turn that the reader applies).
    stored = {1: upright, 2: upright[:, ::-1], 3: upright[::-1, ::-1], 4: upright[::-1],
              5: upright.swapaxes(0, 1), 6: np.rot90(upright, 1), 7: upright[::-1, ::-1].swapaxes(0, 1),
              8: np.rot90(upright, -1)}[orientation]
    np.testing.assert_array_equal(apply_orientation(np.ascontiguousarray(stored), orientation), upright)
    path = tmp_path / "x.png"  # lossless, and PNG's eXIf chunk is read too
    png = cv2.imencode(".png", np.ascontiguousarray(stored))[1]
    png = png.tobytes()
    tiff = exif_app1(orientation)[10:]
    chunk = struct.pack(">I", len(tiff)) + b"eXIf" + tiff
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + tiff))
    path.write_bytes(png[:33] + chunk + png[33:])  # after IHDR (8 + 25 bytes)
    assert exif_orientation(path.read_bytes()) == orientation
    np.testing.assert_array_equal(read_image(path), upright)


def test_orientation_matches_pillow():
    Image = pytest.importorskip("PIL.Image")
    ImageOps = pytest.importorskip("PIL.ImageOps")
    base = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        for fmt, opts in (("JPEG", {"quality": 100}), ("PNG", {}), ("WEBP", {"lossless": True})):
            exif = Image.Exif()
            exif[0x0112] = orientation
            buf = io.BytesIO()
            Image.fromarray(base).save(buf, fmt, exif=exif.tobytes(), **opts)
            data = buf.getvalue()
            assert exif_orientation(data) == orientation, fmt
            ours = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)[..., ::-1]
            ours = apply_orientation(ours, exif_orientation(data))
            theirs = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
            np.testing.assert_array_equal(ours, theirs)


def test_no_or_broken_exif_is_upright():
    plain = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    assert exif_orientation(plain) == 1
    assert exif_orientation(plain[:2] + b"\xff\xe1\x00\x10Exif\x00\x00II*\x00\xff\xff" + plain[2:]) == 1
    assert exif_orientation(b"not an image") == 1


def test_exif_rotated_jpeg_comes_out_upright_with_its_face_changed(photo, tr, tmp_path):
    stored = np.ascontiguousarray(np.rot90(photo, 1))  # the sensor's view: the photo turned 90 deg left
    path = tmp_path / "phone.jpg"
    path.write_bytes(jpeg_with_orientation(stored, 6, b"II"))  # 6: turn 90 deg right to display
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape == stored.shape  # what fexsdk used to read: sideways

    upright = read_image(path)
    assert upright.shape == photo.shape
    assert np.abs(upright.astype(int) - photo).mean() < 4  # only JPEG's loss
    out, faces = tr.apply(path, "surprise", seed=0, return_faces=True)
    assert out.shape == photo.shape and len(faces) >= 1
    want = tr.detect(photo)
    assert any(max(box_iou(f.box, w.box) for w in want) > 0.7 for f in faces)
    x, y, w, h = (int(round(v)) for v in faces[0].box)
    diff = np.abs(out.astype(int) - upright.astype(int))
    assert diff[y : y + h, x : x + w].mean() > 1.0  # the face changed
    outside = np.ones(diff.shape[:2], bool)
    for f in faces:
        fx, fy, fw, fh = (int(round(v)) for v in f.box)
        outside[max(fy - fh, 0) : fy + 2 * fh, max(fx - fw, 0) : fx + 2 * fw] = False
    assert outside.sum() > 0.3 * outside.size  # a real margin is left to check
    assert diff[outside].max() == 0  # nothing else did


def test_alpha_and_16_bit_are_kept(tmp_path):
    bgra = np.random.default_rng(1).integers(0, 256, (12, 20, 4), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), bgra)
    deep = (bgra[..., :3].astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    assert read_image(tmp_path / "d.png").dtype == np.uint16


# --------------------------------------------------------------------------- truncated files


def test_truncated_jpeg_warns(photo, tr, tmp_path):
    data = cv2.imencode(".jpg", photo)[1].tobytes()
    assert truncation(data) is None
    assert truncation(data + b"\x00" * 100 + b"ftypmp42 a motion photo's video") is None  # data after the image
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    assert "end-of-image" in truncation(cut.read_bytes())
    with pytest.warns(TruncatedImageWarning, match="truncated"):
        tr.apply(cut, "happy", seed=0)
    with pytest.raises(ValueError, match="truncated"):
        read_image(cut, truncated="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(cut, truncated="ignore")
        whole = tmp_path / "whole.jpg"
        whole.write_bytes(data)
        read_image(whole)  # no warning


def test_truncated_png_warns(tmp_path):
    data = cv2.imencode(".png", np.full((64, 64, 3), 90, np.uint8))[1].tobytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[:-12])  # no IEND
    with pytest.warns(TruncatedImageWarning, match="IEND"):
        try:
            read_image(cut)
        except ValueError:
            pass  # OpenCV may refuse it outright; the warning came first


# --------------------------------------------------------------------------- fex apply on many images


def test_expand_inputs_and_output_names(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        cv2.imwrite(str(tmp_path / d / "x.png"), np.zeros((4, 4), np.uint8))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    got = expand_inputs([tmp_path / "a", str(tmp_path / "*" / "x.png")])
    assert got == [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"]
    assert [p.name for p in output_names(got, tmp_path / "out")] == ["x.png", "x-2.png"]
    assert output_names([tmp_path / "y.xyz"], tmp_path)[0].name == "y.png"  # a format OpenCV cannot write
    with pytest.raises(FileNotFoundError, match="no file matches"):
        expand_inputs([str(tmp_path / "*.jpeg")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        expand_inputs([tmp_path / "empty"])


def test_cli_apply_folder_and_glob(photo, tmp_path, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    cv2.imwrite(str(src / "one.jpg"), photo)
    cv2.imwrite(str(src / "two.png"), cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA))  # alpha kept
    (src / "three.jpg").write_bytes(jpeg_with_orientation(np.ascontiguousarray(np.rot90(photo, -1)), 8))
    rc = cli.main(["apply", str(src), "-e", "happy", "-o", str(tmp_path / "out"), "--threads", "1"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["one.jpg", "three.jpg", "two.png"]
    assert "3/3" in err  # the progress bar
    assert "3 image(s) written" in out
    assert cv2.imread(str(tmp_path / "out" / "two.png"), cv2.IMREAD_UNCHANGED).shape == photo.shape[:2] + (4,)
    assert cv2.imread(str(tmp_path / "out" / "three.jpg")).shape == photo.shape  # upright

    # a glob, with a truncated file among them: it is skipped with a warning, the others are written
    data = (src / "one.jpg").read_bytes()
    (src / "four.jpg").write_bytes(data[: len(data) // 2])
    rc = cli.main(["apply", str(src / "*.jpg"), "-e", "sad", "-o", str(tmp_path / "out2"), "--threads", "1"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "four.jpg is truncated" in err and "skipped" in err
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["one.jpg", "three.jpg"]

    # one truncated file on its own is refused
    rc = cli.main(["apply", str(src / "four.jpg"), "-e", "sad", "-o", str(tmp_path / "o.jpg"), "--threads", "1"])
    assert rc == 2 and "truncated" in capsys.readouterr().err
    assert not (tmp_path / "o.jpg").exists()


def test_cli_apply_many_inputs_need_an_output_folder(photo, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "a.jpg"), photo)
    cv2.imwrite(str(tmp_path / "b.jpg"), photo)
    rc = cli.main(["apply", str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg"), "-e", "happy", "-o", str(tmp_path / "o.png")])
    assert rc == 2 and "give -o an output folder" in capsys.readouterr().err
    rc = cli.main(["apply", str(tmp_path / "*.jpg"), "-e", "happy", "-o", str(tmp_path)])
    assert rc == 2 and "is the input image" in capsys.readouterr().err
