"""Tests for training.data: every FER2013 format, plain emotion folders, and bad inputs."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from fexsdk.training.data import (
    SPLITS,
    FaceDataset,
    load_dataset,
    load_fer2013,
    load_image_folder,
)

# 20 rows: 10 Training, 6 PublicTest, 4 PrivateTest, every label present.
USAGES = ["Training"] * 10 + ["PublicTest"] * 6 + ["PrivateTest"] * 4
LABELS = [0, 1, 2, 3, 4, 5, 6, 3, 3, 0, 6, 5, 4, 3, 2, 1, 0, 3, 6, 2]
HEADER = "emotion,pixels,Usage\n"


def _faces(n: int, seed: int = 0, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def _pixels(img: np.ndarray) -> str:
    return " ".join(map(str, img.ravel()))


def _write_csv(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text(header + "".join(r + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return _faces(len(LABELS))


@pytest.fixture()
def fer_csv(tmp_path: Path, faces: np.ndarray) -> Path:
    rows = [f"{y},{_pixels(x)},{u}" for x, y, u in zip(faces, LABELS, USAGES)]
    return _write_csv(tmp_path / "fer2013.csv", rows)


def _one_row(label: object = 3, pixels: str | None = None, usage: str = "Training") -> str:
    return f"{label},{_pixels(_faces(1)[0]) if pixels is None else pixels},{usage}"


# ----------------------------------------------------------------------------- CSV


@pytest.mark.parametrize(
    "split, usages", [("train", {"Training"}), ("public", {"PublicTest"}), ("private", {"PrivateTest"}),
                      ("test", {"PublicTest", "PrivateTest"}), ("all", {"Training", "PublicTest", "PrivateTest"})]
)
def test_csv_split_selection_and_exact_pixels(fer_csv: Path, faces: np.ndarray, split: str, usages: set[str]) -> None:
    idx = [i for i, u in enumerate(USAGES) if u in usages]
    ds = load_fer2013(fer_csv, split)
    assert ds.name == "fer2013"
    assert ds.images.dtype == np.uint8 and ds.images.shape == (len(idx), 1, 48, 48)
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [LABELS[i] for i in idx]
    assert len(ds) == len(idx)
    np.testing.assert_array_equal(ds.images[:, 0], faces[idx])
    assert ds.class_counts().tolist() == np.bincount([LABELS[i] for i in idx], minlength=7).tolist()


def test_csv_resized_to_rgb(fer_csv: Path, faces: np.ndarray) -> None:
    ds = load_fer2013(fer_csv, "public", image_size=64, channels=3)
    assert ds.images.shape == (6, 3, 64, 64) and ds.images.flags.c_contiguous
    np.testing.assert_array_equal(ds.images[:, 0], ds.images[:, 2])  # gray repeated into R, G, B
    expected = cv2.resize(faces[10], (64, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(ds.images[0, 1], expected)
    small = load_fer2013(fer_csv, "train", image_size=24)
    np.testing.assert_array_equal(small.images[0, 0], cv2.resize(faces[0], (24, 24), interpolation=cv2.INTER_AREA))


def test_csv_without_usage_only_loads_all(tmp_path: Path, faces: np.ndarray) -> None:
    path = _write_csv(tmp_path / "nousage.csv", [f"{y},{_pixels(x)}" for x, y in zip(faces[:5], LABELS)],
                      header="emotion,pixels\n")
    ds = load_fer2013(path, "all")
    np.testing.assert_array_equal(ds.images[:, 0], faces[:5])
    with pytest.raises(ValueError, match=r"no Usage column.*'train'.*split='all'"):
        load_fer2013(path, "train")


def test_csv_header_variants_and_blank_lines(tmp_path: Path) -> None:
    # Column order, case, a BOM and a trailing blank line must not matter.
    img = _faces(1)[0]
    path = tmp_path / "odd.csv"
    path.write_text("\ufeffUsage,Pixels,Emotion\n" + f"PublicTest,{_pixels(img)},5\n\n", encoding="utf-8")
    ds = load_fer2013(path, "public")
    assert ds.labels.tolist() == [5]
    np.testing.assert_array_equal(ds.images[0, 0], img)


def test_csv_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "fer2013.csv"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_fer2013(missing)


def test_csv_missing_columns(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "cols.csv", ["3,1 2 3,Training"], header="label,pixels,Usage\n")
    with pytest.raises(ValueError, match=r"found columns \['label', 'pixels', 'Usage'\].*expected emotion, pixels and Usage"):
        load_fer2013(path)


def test_csv_wrong_pixel_count(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "short.csv", [_one_row(), _one_row(pixels="1 2 3")])
    with pytest.raises(ValueError, match=r"short\.csv, data row 2 \(line 3\): found 3 pixel values, expected 2304"):
        load_fer2013(path)


def test_csv_non_numeric_pixel(tmp_path: Path) -> None:
    values = _pixels(_faces(1)[0]).split()
    values[100] = "12a"
    path = _write_csv(tmp_path / "junk.csv", [_one_row(pixels=" ".join(values))])
    with pytest.raises(ValueError, match=r"data row 1 \(line 2\): non-numeric pixel value '12a'"):
        load_fer2013(path)
    values[100] = "300"
    path = _write_csv(tmp_path / "range.csv", [_one_row(pixels=" ".join(values))])
    with pytest.raises(ValueError, match=r"data row 1 \(line 2\): pixel value 300 is out of range 0-255"):
        load_fer2013(path)


@pytest.mark.parametrize("label, message", [(7, r"emotion label 7 is out of range 0-6"),
                                            (-1, r"emotion label -1 is out of range 0-6"),
                                            ("happy", r"emotion 'happy' is not an integer label 0-6")])
def test_csv_bad_emotion_label(tmp_path: Path, label: object, message: str) -> None:
    path = _write_csv(tmp_path / "labels.csv", [_one_row(), _one_row(), _one_row(label=label)])
    with pytest.raises(ValueError, match=r"data row 3 \(line 4\): " + message):
        load_fer2013(path)


def test_csv_unknown_usage_and_short_row(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "usage.csv", [_one_row(usage="Validation")])
    with pytest.raises(ValueError, match=r"data row 1 \(line 2\): unknown Usage 'Validation'; expected one of Training"):
        load_fer2013(path)
    path = _write_csv(tmp_path / "fields.csv", ["3"])
    with pytest.raises(ValueError, match=r"data row 1 \(line 2\): has 1 fields, expected 3"):
        load_fer2013(path)


def test_csv_empty_split(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "trainonly.csv", [_one_row(), _one_row()])
    with pytest.raises(ValueError, match=r"split 'private' of .*trainonly\.csv has no images \(Usage values present: Training\)"):
        load_fer2013(path, "private")


def test_unknown_split_and_bad_arguments(fer_csv: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown split 'val'; valid splits: " + ", ".join(SPLITS)):
        load_fer2013(fer_csv, "val")
    with pytest.raises(ValueError, match=r"channels must be 1 \(gray\) or 3 \(RGB\), got 4"):
        load_fer2013(fer_csv, channels=4)
    with pytest.raises(ValueError, match=r"image_size must be a positive integer, got 0"):
        load_fer2013(fer_csv, image_size=0)
    with pytest.raises(ValueError, match=r"unsupported FER2013 source .*fer2013\.txt"):
        (fer_csv.parent / "fer2013.txt").write_text("x")
        load_fer2013(fer_csv.parent / "fer2013.txt")


# ----------------------------------------------------------------------------- NPZ


@pytest.fixture()
def fer_npz_small(tmp_path: Path, faces: np.ndarray) -> Path:
    usage = np.array([{"Training": 0, "PublicTest": 1, "PrivateTest": 2}[u] for u in USAGES], np.uint8)
    path = tmp_path / "small.npz"
    np.savez_compressed(path, images=faces, labels=np.array(LABELS, np.uint8), usage=usage)
    return path


@pytest.mark.parametrize("split, count", [("train", 10), ("public", 6), ("private", 4), ("test", 10), ("all", 20)])
def test_npz_splits_exact(fer_npz_small: Path, faces: np.ndarray, split: str, count: int) -> None:
    ds = load_fer2013(fer_npz_small, split)
    wanted = {"train": (0,), "public": (1,), "private": (2,), "test": (1, 2), "all": (0, 1, 2)}[split]
    idx = [i for i, u in enumerate(USAGES) if ("Training", "PublicTest", "PrivateTest").index(u) in wanted]
    assert len(ds) == count and ds.images.shape == (count, 1, 48, 48) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [LABELS[i] for i in idx]
    np.testing.assert_array_equal(ds.images[:, 0], faces[idx])


def test_npz_without_usage(tmp_path: Path, faces: np.ndarray) -> None:
    path = tmp_path / "plain.npz"
    np.savez(path, images=faces, labels=np.array(LABELS))
    ds = load_dataset(path, "all", image_size=32, channels=3)
    assert ds.images.shape == (20, 3, 32, 32) and ds.labels.tolist() == LABELS
    with pytest.raises(ValueError, match=r"plain\.npz has no 'usage' array, so split 'public' cannot be selected"):
        load_fer2013(path, "public")


def test_npz_rgb_images(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    path = tmp_path / "rgb.npz"
    np.savez(path, images=rgb, labels=np.array([0, 1, 2]))
    colour = load_fer2013(path, "all", image_size=40, channels=3)
    np.testing.assert_array_equal(colour.images, rgb.transpose(0, 3, 1, 2))
    gray = load_fer2013(path, "all", image_size=40, channels=1)
    np.testing.assert_array_equal(gray.images[1, 0], cv2.cvtColor(rgb[1], cv2.COLOR_RGB2GRAY))


def test_npz_errors(tmp_path: Path, faces: np.ndarray) -> None:
    labels = np.array(LABELS)
    np.savez(tmp_path / "nolabels.npz", images=faces, y=labels)
    with pytest.raises(ValueError, match=r"nolabels\.npz has no 'labels' array \(found keys: images, y\)"):
        load_fer2013(tmp_path / "nolabels.npz", "all")
    np.savez(tmp_path / "noimages.npz", x=faces, labels=labels)
    with pytest.raises(ValueError, match=r"noimages\.npz has no 'images' array"):
        load_fer2013(tmp_path / "noimages.npz", "all")
    np.savez(tmp_path / "mismatch.npz", images=faces[:19], labels=labels)
    with pytest.raises(ValueError, match=r"mismatch\.npz: 19 images but 20 labels"):
        load_fer2013(tmp_path / "mismatch.npz", "all")
    np.savez(tmp_path / "range.npz", images=faces, labels=np.where(np.arange(20) == 4, 9, labels))
    with pytest.raises(ValueError, match=r"range\.npz: labels\[4\] = 9 is out of range 0-6"):
        load_fer2013(tmp_path / "range.npz", "all")
    np.savez(tmp_path / "trainonly.npz", images=faces, labels=labels, usage=np.zeros(20, np.uint8))
    with pytest.raises(ValueError, match=r"split 'test' of .*trainonly\.npz has no images"):
        load_fer2013(tmp_path / "trainonly.npz", "test")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"cannot read .*broken\.npz as an \.npz archive"):
        load_fer2013(tmp_path / "broken.npz", "all")


# ----------------------------------------------------------------------------- Kaggle folder


@pytest.fixture()
def kaggle(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """root/train/<emotion>/Training_*.png|jpg and root/test/<emotion>/{Public,Private}Test_*.png."""
    root = tmp_path / "fer_kaggle"
    imgs = {}
    spec = [("train", "angry", "Training_1.png"), ("train", "happy", "Training_2.png"),
            ("train", "surprised", "Training_3.jpg"), ("train", "neutral", "Training_4.png"),
            ("test", "anger", "PublicTest_5.png"), ("test", "sad", "PublicTest_6.png"),
            ("test", "fear", "PrivateTest_7.png")]
    for i, (split, emotion, fname) in enumerate(spec):
        folder = root / split / emotion
        folder.mkdir(parents=True, exist_ok=True)
        img = _faces(1, seed=10 + i)[0] if fname.endswith(".png") else np.full((48, 48), 90 + i, np.uint8)
        assert cv2.imwrite(str(folder / fname), img)
        imgs[fname] = img
    (root / "train" / "happy" / "notes.txt").write_text("not an image, skipped")
    (root / "test" / "disgust").mkdir()  # an empty emotion folder is fine
    return root, imgs


def test_kaggle_folder_splits(kaggle: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, imgs = kaggle
    train = load_fer2013(root, "train")
    # Sorted by label: angry(0), happy(3), surprise(5), neutral(6).
    assert train.labels.tolist() == [0, 3, 5, 6] and train.images.shape == (4, 1, 48, 48)
    np.testing.assert_array_equal(train.images[0, 0], imgs["Training_1.png"])
    np.testing.assert_array_equal(train.images[3, 0], imgs["Training_4.png"])
    assert np.abs(train.images[2, 0].astype(int) - imgs["Training_3.jpg"]).max() <= 2  # JPEG, not exact
    assert load_fer2013(root, "public").labels.tolist() == [0, 4]
    private = load_fer2013(root, "private")
    assert private.labels.tolist() == [2]
    np.testing.assert_array_equal(private.images[0, 0], imgs["PrivateTest_7.png"])
    assert load_fer2013(root, "test").labels.tolist() == [0, 2, 4]
    everything = load_dataset(root, "all", image_size=96, channels=3)
    assert everything.images.shape == (7, 3, 96, 96) and everything.labels.tolist() == [0, 3, 5, 6, 0, 2, 4]


def test_kaggle_folder_errors(kaggle: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    root, _ = kaggle
    for f in (root / "test").rglob("PrivateTest_*"):
        f.unlink()
    with pytest.raises(ValueError, match=r"split 'private' of .*fer_kaggle has no images: no files named PrivateTest_\*"):
        load_fer2013(root, "private")
    (root / "test" / "contempt").mkdir()
    with pytest.raises(ValueError, match=r"unknown emotion folder 'contempt' in .*test; folder names must be emotions: "
                                         r"angry, disgust, fear, happy, sad, surprise, neutral"):
        load_fer2013(root, "test")
    (root / "test" / "contempt").rmdir()
    bad = root / "train" / "sad" / "Training_9.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG truncated")
    with pytest.raises(ValueError, match=r"cannot decode image file .*Training_9\.png"):
        load_fer2013(root, "train")
    only_train = tmp_path / "only_train"
    (only_train / "train" / "happy").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"split 'public' needs the folder .*only_train/test"):
        load_fer2013(only_train, "public")
    with pytest.raises(FileNotFoundError, match=r"not a FER2013 Kaggle folder"):
        load_fer2013(root / "train" / "happy")


# ----------------------------------------------------------------------------- second-domain folders


@pytest.fixture()
def rgb_folder(tmp_path: Path) -> Path:
    """64x64 colour images in <emotion>/ folders, like a FERG-DB export."""
    root = tmp_path / "ferg"
    colours_bgr = {"happy": (0, 0, 255), "surprise": (255, 0, 0), "joy": (0, 255, 0)}  # red, blue, green
    for emotion, bgr in colours_bgr.items():
        (root / emotion).mkdir(parents=True)
        for k in range(2):
            img = np.zeros((64, 64, 3), np.uint8)
            img[:] = bgr
            img[0, 0] = (k, k, k)  # keep files distinct
            assert cv2.imwrite(str(root / emotion / f"{emotion}_{k}.png"), img)
    gray = root / "sad" / "gray.png"
    gray.parent.mkdir()
    assert cv2.imwrite(str(gray), np.full((80, 60), 200, np.uint8))  # non-square, single channel
    return root


def test_image_folder_to_small_gray(rgb_folder: Path) -> None:
    ds = load_image_folder(rgb_folder, image_size=48, channels=1)
    assert ds.name == "ferg" and ds.images.shape == (7, 1, 48, 48) and ds.images.dtype == np.uint8
    # happy + joy (alias) -> 3, sad -> 4, surprise -> 5.
    assert ds.labels.tolist() == [3, 3, 3, 3, 4, 5, 5]
    assert ds.class_counts().tolist() == [0, 0, 0, 4, 1, 2, 0]
    red_gray = int(cv2.cvtColor(np.array([[[0, 0, 255]]], np.uint8), cv2.COLOR_BGR2GRAY)[0, 0])
    assert ds.images[0, 0, 24, 24] == red_gray
    assert np.all(ds.images[4] == 200)


def test_image_folder_to_large_rgb(rgb_folder: Path) -> None:
    ds = load_image_folder(rgb_folder, image_size=128, channels=3, name="FERG-DB")
    assert ds.name == "FERG-DB" and ds.images.shape == (7, 3, 128, 128)
    assert ds.images[0, :, 64, 64].tolist() == [255, 0, 0]  # happy is red, stored as RGB
    assert ds.images[5, :, 64, 64].tolist() == [0, 0, 255]  # surprise is blue
    assert ds.images[4, :, 64, 64].tolist() == [200, 200, 200]  # gray file repeated into 3 channels


def test_image_folder_errors(rgb_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"image folder not found: .*missing"):
        load_image_folder(tmp_path / "missing", 48, 1)
    empty = tmp_path / "empty"
    (empty / "happy").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no images found in .*empty"):
        load_image_folder(empty, 48, 1)
    (rgb_folder / "bored").mkdir()
    with pytest.raises(ValueError, match=r"unknown emotion folder 'bored'.*angry, disgust, fear"):
        load_image_folder(rgb_folder, 48, 1)
    (rgb_folder / "bored").rmdir()
    (rgb_folder / "sad" / "broken.jpg").write_bytes(b"\xff\xd8\xff\x00 not really a jpeg")
    with pytest.raises(ValueError, match=r"cannot decode image file .*broken\.jpg"):
        load_image_folder(rgb_folder, 48, 1)


def test_load_dataset_plain_folder_needs_split_all(rgb_folder: Path) -> None:
    assert len(load_dataset(rgb_folder, "all")) == 7
    with pytest.raises(ValueError, match=r"plain emotion folder with no train/test split; load it with split='all'"):
        load_dataset(rgb_folder, "train")


# ----------------------------------------------------------------------------- FaceDataset


def test_face_dataset_validates() -> None:
    ds = FaceDataset(np.zeros((3, 1, 8, 8), np.uint8), np.array([0, 6, 6], np.uint8), "toy")
    assert len(ds) == 3 and ds.labels.dtype == np.int64 and ds.class_counts().tolist() == [1, 0, 0, 0, 0, 0, 2]
    with pytest.raises(ValueError, match=r"'toy': 3 images but labels of shape \(2,\)"):
        FaceDataset(np.zeros((3, 1, 8, 8), np.uint8), np.array([0, 1]), "toy")
    with pytest.raises(ValueError, match=r"images must be uint8 \(N, C, H, W\)"):
        FaceDataset(np.zeros((3, 8, 8), np.uint8), np.array([0, 1, 2]), "toy")


# ----------------------------------------------------------------------------- the real archive


def test_real_fer2013_npz(fer_npz: Path) -> None:
    train = load_fer2013(fer_npz, "train")
    assert train.images.shape == (28709, 1, 48, 48) and train.images.dtype == np.uint8
    assert train.class_counts().tolist() == [3995, 436, 4097, 7215, 4830, 3171, 4965]
    assert train.labels[:10].tolist() == [0, 0, 2, 4, 6, 2, 4, 3, 3, 2]
    assert train.images[0, 0, 0, :10].tolist() == [70, 80, 82, 72, 58, 58, 60, 63, 54, 58]
    public = load_fer2013(fer_npz, "public")
    assert len(public) == 3589
    assert public.class_counts().tolist() == [467, 56, 496, 895, 653, 415, 607]
    with pytest.raises(ValueError, match=r"split 'private' of .*fer2013\.npz has no images"):
        load_fer2013(fer_npz, "private")
