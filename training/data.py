"""Face data sets for training: FER2013 in any of its formats, and plain emotion folders.

Every loader returns a :class:`FaceDataset` already converted to the model's
image size and channel count, so the trainer never sees format differences.
Bad inputs fail early with a message that names the file, row or folder at
fault, because a silent mistake here (a shifted label, a wrong split) costs a
whole training run.

Formats:

* the original ``fer2013.csv`` (columns ``emotion``, ``pixels``, ``Usage``);
* an ``.npz`` with ``images`` (N, H, W) or (N, H, W, C) uint8 and ``labels``,
  optionally ``usage`` (0=Training, 1=PublicTest, 2=PrivateTest, or those names), such as
  ``../shared/data/fer2013.npz``;
* the Kaggle folder layout ``root/train/<emotion>/*`` and ``root/test/<emotion>/*``;
* any folder ``root/<emotion>/*`` (a second domain, e.g. FERG-DB) through
  :func:`load_image_folder`.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from fexsdk.emotions import EMOTIONS, NUM_EMOTIONS, emotion_index

#: Split names. ``test`` is PublicTest + PrivateTest; ``all`` is every image.
SPLITS: tuple[str, ...] = ("train", "public", "private", "test", "all")

#: FER2013 ``Usage`` values, in the order of the npz ``usage`` codes 0, 1, 2.
USAGE_NAMES: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")

_SPLIT_USAGE: dict[str, tuple[int, ...]] = {
    "train": (0,),
    "public": (1,),
    "private": (2,),
    "test": (1, 2),
    "all": (0, 1, 2),
}
_USAGE_CODE = {name.lower(): code for code, name in enumerate(USAGE_NAMES)}


class NoSplitError(ValueError):
    """The source has no train/test split (an npz without ``usage``, a CSV without ``Usage``, a plain
    emotion folder), so only ``split="all"`` can be loaded from it."""

FER_SIZE = 48
FER_PIXELS = FER_SIZE * FER_SIZE

#: File endings read as images in folders; other files (README, .DS_Store) are skipped.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pnm"})

#: Loads of more files or CSV rows than this show a progress bar.
PROGRESS_MIN = 2000

_INT_TOKEN = re.compile(r"[+-]?[0-9]+")


@dataclass
class FaceDataset:
    """Faces and emotion labels in memory, in the layout the trainer consumes.

    ``images`` is uint8 (N, C, H, W) with C 1 (gray) or 3 (RGB); ``labels`` are
    int64 indices in :data:`fexsdk.emotions.EMOTIONS` order; ``name`` is the
    domain name (StarGAN's mask vector tells domains apart by it).
    """

    images: np.ndarray
    labels: np.ndarray
    name: str

    def __post_init__(self) -> None:
        # Checked here so a hand-built data set fails at construction, not mid-epoch.
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(
                f"FaceDataset {self.name!r}: images must be uint8 (N, C, H, W) with C 1 or 3, "
                f"got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"FaceDataset {self.name!r}: {self.images.shape[0]} images but labels of shape {self.labels.shape}"
            )
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= NUM_EMOTIONS):
            raise ValueError(f"FaceDataset {self.name!r}: labels must be in 0-{NUM_EMOTIONS - 1}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> np.ndarray:
        """Images per emotion, shape (7,), for class weights and balance checks."""
        return np.bincount(self.labels, minlength=NUM_EMOTIONS).astype(np.int64)


# --------------------------------------------------------------------------- public API


def load_fer2013(
    path: str | os.PathLike, split: str = "train", image_size: int = 48, channels: int = 1
) -> FaceDataset:
    """Load one split of FER2013 from a ``.csv``, an ``.npz`` or a Kaggle-layout folder.

    ``split`` is one of :data:`SPLITS`. A CSV without ``Usage`` or an npz without
    ``usage`` can only be loaded with ``split="all"`` (there is nothing to split
    on, and guessing would leak test images into training); :class:`NoSplitError`
    says so, and :func:`load_training_data` then trains on every image. In a Kaggle folder,
    ``train`` reads ``train/``, ``test`` reads ``test/``, and ``public``/``private``
    read the files in ``test/`` named ``PublicTest_*``/``PrivateTest_*``.
    """
    _check_args(split, image_size, channels)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"FER2013 source not found: {p}")
    if p.is_dir():
        return _load_kaggle_folder(p, split, image_size, channels)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return _load_csv(p, split, image_size, channels)
    if suffix == ".npz":
        return _load_npz(p, split, image_size, channels)
    raise ValueError(f"unsupported FER2013 source {p}: expected a .csv file, an .npz file or a Kaggle folder (train/, test/)")


def load_image_folder(
    root: str | os.PathLike, image_size: int, channels: int, name: str | None = None
) -> FaceDataset:
    """Load every image under ``root/<emotion>/`` as one domain (e.g. FERG-DB).

    Folder names are emotion names or aliases (``surprised``, ``anger``...).
    Images of any size and colour are converted to ``image_size`` square and
    ``channels``, so a second domain can be trained jointly with FER2013. Files
    without an image extension are skipped. ``name`` defaults to the folder name.
    """
    _check_args("all", image_size, channels)
    root_path = Path(root)
    if not root_path.exists():
        raise FileNotFoundError(f"image folder not found: {root_path}")
    if not root_path.is_dir():
        raise ValueError(f"{root_path} is not a folder; expected a folder with one sub-folder per emotion")
    files = _scan_emotion_folder(root_path)
    if not files:
        raise ValueError(f"no images found in {root_path}; expected {root_path}/<emotion>/*.png|jpg")
    domain = name if name is not None else (root_path.resolve().name or "images")
    return _read_files(files, image_size, channels, domain, desc=f"loading {domain}")


def load_dataset(
    path: str | os.PathLike, split: str = "train", image_size: int = 48, channels: int = 1
) -> FaceDataset:
    """One entry point for the trainer's ``--data`` option.

    FER2013 formats go to :func:`load_fer2013`. A folder that has emotion
    sub-folders instead of ``train/``/``test/`` is read with
    :func:`load_image_folder`; it has no splits, so only ``split="all"`` is accepted.
    """
    _check_args(split, image_size, channels)
    p = Path(path)
    if p.is_dir() and not (p / "train").is_dir() and not (p / "test").is_dir() and _has_emotion_subfolder(p):
        if split != "all":
            raise NoSplitError(
                f"{p} is a plain emotion folder with no train/test split; load it with split='all', "
                f"or arrange it as {p}/train/<emotion>/ and {p}/test/<emotion>/"
            )
        return load_image_folder(p, image_size, channels)
    return load_fer2013(p, split, image_size, channels)


def load_training_data(path: str | os.PathLike, image_size: int = 48, channels: int = 1) -> FaceDataset:
    """The images ``fex train`` trains on: the Training split, or every image of a source without a
    split (an npz without ``usage``, a CSV without ``Usage``, a plain emotion folder), with a warning."""
    try:
        return load_dataset(path, "train", image_size, channels)
    except NoSplitError:
        data = load_dataset(path, "all", image_size, channels)
        warnings.warn(f"{path} has no train/test split (no usage/Usage values): training on all {len(data)} images; "
                      "the validation batch is the first 64 of them", stacklevel=2)
        return data


# --------------------------------------------------------------------------- checks


def _check_args(split: str, image_size: int, channels: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels!r}")


def _empty_split(split: str, source: Path, present: Sequence[int]) -> ValueError:
    found = ", ".join(USAGE_NAMES[u] for u in sorted(set(present))) or "none"
    return ValueError(f"split {split!r} of {source} has no images (Usage values present: {found})")


# --------------------------------------------------------------------------- array conversion


def _interpolation(height: int, width: int, size: int) -> int:
    # INTER_AREA averages when shrinking (no aliasing); it blurs blockily when enlarging.
    return cv2.INTER_AREA if size <= height and size <= width else cv2.INTER_LINEAR


def _arrays_to_layout(images: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """(N, H, W) gray or (N, H, W, 3) RGB uint8 -> (N, C, S, S), vectorised where possible.

    Colour conversion is per pixel, so all images go through one cvtColor call as a
    tall (N*H, W, 3) picture; only a resize needs a per-image loop.
    """
    n, h, w = images.shape[:3]
    if images.ndim == 4 and channels == 1:
        images = cv2.cvtColor(np.ascontiguousarray(images).reshape(n * h, w, 3), cv2.COLOR_RGB2GRAY).reshape(n, h, w)
    if (h, w) != (image_size, image_size):
        interp = _interpolation(h, w, image_size)
        out = np.empty((n, image_size, image_size) + images.shape[3:], np.uint8)
        for i in range(n):
            out[i] = cv2.resize(images[i], (image_size, image_size), interpolation=interp)
        images = out
    if images.ndim == 3:
        images = images[:, None]
        if channels == 3:
            images = np.repeat(images, 3, axis=1)
    else:
        images = images.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(images)


# --------------------------------------------------------------------------- CSV


def _parse_pixels(text: str, where: str) -> np.ndarray:
    """The 2304 pixel values of one CSV row; fromstring is ~4x faster than split()+array."""
    try:
        with warnings.catch_warnings():
            # numpy < 2.3 only warns (and returns a partial row) on junk; make it raise.
            warnings.simplefilter("error", DeprecationWarning)
            values = np.fromstring(text, dtype=np.int64, sep=" ")
    except (ValueError, DeprecationWarning):
        values = None
    if values is None or values.size != FER_PIXELS:
        tokens = text.split()
        if len(tokens) != FER_PIXELS:
            raise ValueError(f"{where}: found {len(tokens)} pixel values, expected {FER_PIXELS} (48x48)")
        bad = next((t for t in tokens if not _INT_TOKEN.fullmatch(t)), None)
        if bad is not None:
            raise ValueError(f"{where}: non-numeric pixel value {bad!r}; pixels must be integers 0-255")
        values = np.array([int(t) for t in tokens], dtype=np.int64)
    if values.min() < 0 or values.max() > 255:
        bad_value = int(values[(values < 0) | (values > 255)][0])
        raise ValueError(f"{where}: pixel value {bad_value} is out of range 0-255")
    return values.astype(np.uint8)


def _load_csv(path: Path, split: str, image_size: int, channels: int) -> FaceDataset:
    wanted = _SPLIT_USAGE[split]
    labels: list[int] = []
    rows: list[tuple[str, str]] = []  # (pixels text, where) of the selected rows
    present: list[int] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty; expected a header with columns emotion, pixels, Usage")
        columns = [c.strip().lower() for c in header]
        if "emotion" not in columns or "pixels" not in columns:
            raise ValueError(
                f"{path} does not have the FER2013 columns: found columns {header}, "
                f"expected emotion, pixels and Usage (Usage may be left out for split='all')"
            )
        i_emotion, i_pixels = columns.index("emotion"), columns.index("pixels")
        i_usage = columns.index("usage") if "usage" in columns else None
        if i_usage is None and split != "all":
            raise NoSplitError(
                f"{path} has no Usage column (found columns {header}), so it cannot be split into {split!r}; "
                f"use split='all' (fex eval --split all; fex train uses every image of such a file)"
            )
        n_fields = max(i_emotion, i_pixels, -1 if i_usage is None else i_usage) + 1
        data_row = 0
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # blank line, e.g. at the end of the file
            data_row += 1
            where = f"{path}, data row {data_row} (line {reader.line_num})"
            if len(row) < n_fields:
                raise ValueError(f"{where}: has {len(row)} fields, expected {len(header)} ({', '.join(header)})")
            usage = 0
            if i_usage is not None:
                code = _USAGE_CODE.get(row[i_usage].strip().lower())
                if code is None:
                    raise ValueError(
                        f"{where}: unknown Usage {row[i_usage]!r}; expected one of {', '.join(USAGE_NAMES)}"
                    )
                usage = code
            present.append(usage)
            raw_label = row[i_emotion].strip()
            if not _INT_TOKEN.fullmatch(raw_label):
                raise ValueError(f"{where}: emotion {raw_label!r} is not an integer label 0-{NUM_EMOTIONS - 1}")
            label = int(raw_label)
            if not 0 <= label < NUM_EMOTIONS:
                raise ValueError(
                    f"{where}: emotion label {label} is out of range 0-{NUM_EMOTIONS - 1} ({', '.join(EMOTIONS)})"
                )
            if split == "all" or usage in wanted:
                labels.append(label)
                rows.append((row[i_pixels], where))
    if not rows:
        if i_usage is None:
            raise ValueError(f"split {split!r} of {path} has no images (the file has no data rows)")
        raise _empty_split(split, path, present)
    images = np.empty((len(rows), FER_SIZE, FER_SIZE), np.uint8)
    for i, (text, where) in enumerate(
        tqdm(rows, desc=f"parsing {path.name}", unit="row", disable=len(rows) <= PROGRESS_MIN)
    ):
        images[i] = _parse_pixels(text, where).reshape(FER_SIZE, FER_SIZE)
    return FaceDataset(_arrays_to_layout(images, image_size, channels), np.asarray(labels, np.int64), "fer2013")


# --------------------------------------------------------------------------- NPZ


def _usage_codes(values: np.ndarray, path: Path) -> np.ndarray:
    """npz ``usage``: codes 0/1/2, or FER2013's names ('Training', 'PublicTest', 'PrivateTest', any case)."""
    if values.dtype.kind in "US":
        names = np.char.lower(np.char.strip(values.astype(str)))
        codes = np.full(names.shape, -1, np.int64)
        for name, code in _USAGE_CODE.items():
            codes[names == name] = code
        bad = np.flatnonzero(codes < 0)
        if bad.size:
            raise ValueError(f"{path}: usage[{bad[0]}] = {str(values[bad[0]])!r} is not one of {', '.join(USAGE_NAMES)} "
                             "(or their codes 0, 1, 2)")
        return codes
    return _integer_array(values, "usage", path)


def _integer_array(values: np.ndarray, what: str, path: Path) -> np.ndarray:
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values == np.round(values)):
        return values.astype(np.int64)
    raise ValueError(f"{path}: {what} must be integers, got dtype {values.dtype}")


_NPZ_WANTED = "fexsdk reads an .npz written by np.savez with uint8 images, integer labels and optionally usage"


def _npz_array(archive, key: str, path: Path) -> np.ndarray:
    """One array of the archive; object (pickled) arrays are refused, never unpickled."""
    try:
        return np.asarray(archive[key])
    except Exception as exc:  # object arrays (pickles), damaged members
        raise ValueError(f"{path}: array {key!r} cannot be read ({type(exc).__name__}: pickled objects or damaged "
                         f"data); {_NPZ_WANTED}") from None


def _load_npz(path: Path, split: str, image_size: int, channels: int) -> FaceDataset:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # zipfile.BadZipFile, OSError, ValueError: all mean "not a readable npz"
        # numpy's own text would advise loading the file unsafely (allow_pickle): not said here, on purpose.
        raise ValueError(f"cannot read {path} as an .npz archive ({type(exc).__name__}: damaged, truncated or "
                         f"another format); {_NPZ_WANTED}") from None
    with archive:
        keys = set(archive.files)
        for key in ("images", "labels"):
            if key not in keys:
                raise ValueError(
                    f"{path} has no {key!r} array (found keys: {', '.join(sorted(keys)) or 'none'}); "
                    f"expected images, labels and optionally usage"
                )
        labels = _integer_array(_npz_array(archive, "labels", path).reshape(-1), "labels", path)
        if labels.size:
            bad = np.flatnonzero((labels < 0) | (labels >= NUM_EMOTIONS))
            if bad.size:
                raise ValueError(
                    f"{path}: labels[{bad[0]}] = {labels[bad[0]]} is out of range 0-{NUM_EMOTIONS - 1} "
                    f"({bad.size} labels out of range)"
                )
        if "usage" in keys:
            usage = _usage_codes(_npz_array(archive, "usage", path).reshape(-1), path)
            if usage.shape != labels.shape:
                raise ValueError(f"{path}: {usage.size} usage values but {labels.size} labels")
            bad = np.flatnonzero((usage < 0) | (usage > 2))
            if bad.size:
                raise ValueError(f"{path}: usage[{bad[0]}] = {usage[bad[0]]} is not 0, 1 or 2 ({', '.join(USAGE_NAMES)})")
            mask = None if split == "all" else np.isin(usage, _SPLIT_USAGE[split])
        else:
            if split != "all":
                raise NoSplitError(
                    f"{path} has no 'usage' array, so split {split!r} cannot be selected; use split='all' "
                    f"(fex eval --split all; fex train uses every image of such a file) (found keys: {', '.join(sorted(keys))})"
                )
            usage, mask = None, None
        # Checked before decompressing the images, so an empty split fails fast.
        if mask is not None and not mask.any():
            raise _empty_split(split, path, np.unique(usage).tolist())
        images = _npz_array(archive, "images", path)
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)):
        raise ValueError(f"{path}: images must have shape (N, H, W) or (N, H, W, 3), got {images.shape}")
    if images.shape[0] != labels.size:
        raise ValueError(f"{path}: {images.shape[0]} images but {labels.size} labels; they must have the same length")
    if images.dtype != np.uint8:
        if images.dtype.kind not in "iu" or (images.size and (images.min() < 0 or images.max() > 255)):
            raise ValueError(f"{path}: images must be uint8 0-255, got dtype {images.dtype}")
        images = images.astype(np.uint8)
    if not labels.size:
        raise ValueError(f"split {split!r} of {path} has no images (the archive is empty)")
    if mask is not None:
        images, labels = images[mask], labels[mask]
    return FaceDataset(_arrays_to_layout(images, image_size, channels), labels, "fer2013")


# --------------------------------------------------------------------------- folders


def _is_image_file(entry: os.DirEntry[str]) -> bool:
    return entry.is_file() and not entry.name.startswith(".") and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS


def _has_emotion_subfolder(root: Path) -> bool:
    for entry in os.scandir(root):
        if entry.is_dir():
            try:
                emotion_index(entry.name)
                return True
            except ValueError:
                pass
    return False


def _scan_emotion_folder(root: Path, prefix: str = "") -> list[tuple[Path, int]]:
    """(file, label) for every image in ``root/<emotion>/``, sorted by label then name."""
    files: list[tuple[Path, int]] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        try:
            label = emotion_index(entry.name)
        except ValueError:
            raise ValueError(
                f"unknown emotion folder {entry.name!r} in {root}; folder names must be emotions: "
                f"{', '.join(EMOTIONS)} (aliases such as 'surprised' or 'anger' also work)"
            ) from None
        for f in sorted(os.scandir(entry.path), key=lambda e: e.name):
            if _is_image_file(f) and f.name.startswith(prefix):
                files.append((Path(f.path), label))
    files.sort(key=lambda item: item[1])  # stable: names stay sorted within a label
    return files


def _read_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """One file -> (C, S, S) uint8; gray images come back from IMREAD_COLOR with equal channels."""
    try:
        data = np.fromfile(path, dtype=np.uint8)  # imdecode also copes with non-ASCII paths on Windows
    except OSError as exc:
        raise ValueError(f"cannot read image file {path}: {exc}") from exc
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError(f"cannot decode image file {path}: it is corrupt or not an image")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if channels == 1 else cv2.COLOR_BGR2RGB)
    h, w = image.shape[:2]
    if (h, w) != (image_size, image_size):
        image = cv2.resize(image, (image_size, image_size), interpolation=_interpolation(h, w, image_size))
    return image[None] if channels == 1 else image.transpose(2, 0, 1)


def _read_files(files: list[tuple[Path, int]], image_size: int, channels: int, name: str, desc: str) -> FaceDataset:
    images = np.empty((len(files), channels, image_size, image_size), np.uint8)
    for i, (path, _) in enumerate(tqdm(files, desc=desc, unit="img", disable=len(files) <= PROGRESS_MIN)):
        images[i] = _read_image(path, image_size, channels)
    labels = np.fromiter((label for _, label in files), dtype=np.int64, count=len(files))
    return FaceDataset(images, labels, name)


def _load_kaggle_folder(root: Path, split: str, image_size: int, channels: int) -> FaceDataset:
    if not (root / "train").is_dir() and not (root / "test").is_dir():
        raise FileNotFoundError(
            f"{root} is not a FER2013 Kaggle folder: expected {root / 'train'} and {root / 'test'} "
            f"with one sub-folder per emotion (for a plain <emotion>/ folder use load_image_folder)"
        )
    parts = {
        "train": [("train", "")],
        "public": [("test", "PublicTest_")],
        "private": [("test", "PrivateTest_")],
        "test": [("test", "")],
        "all": [("train", ""), ("test", "")],
    }[split]
    files: list[tuple[Path, int]] = []
    for sub, prefix in parts:
        folder = root / sub
        if not folder.is_dir():
            raise FileNotFoundError(f"split {split!r} needs the folder {folder}, which does not exist")
        found = _scan_emotion_folder(folder, prefix)
        if not found:
            which = f"files named {prefix}*" if prefix else "images"
            raise ValueError(f"split {split!r} of {root} has no images: no {which} in {folder}/<emotion>/")
        files.extend(found)
    return _read_files(files, image_size, channels, "fer2013", desc=f"loading FER2013 {split}")
