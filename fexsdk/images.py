"""The one check of image arguments used by every runtime module (detectors, crops, paste-back, Transfer)."""

from __future__ import annotations

import numpy as np

SHAPES = "HxW (gray), HxWx3 (BGR) or HxWx4 (BGRA)"


def check_image(image) -> np.ndarray:
    """Validate a uint8 gray/BGR/BGRA image; an HxWx1 image is returned as HxW. Raises ValueError."""
    if image is None:
        raise ValueError(f"image is None; pass a uint8 array, {SHAPES}")
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0-255, OpenCV's convention), got dtype {image.dtype}; convert with "
                         "np.clip(x, 0, 255).astype(np.uint8), or (x * 255) first for floats in [0, 1]")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise ValueError(f"image must be {SHAPES}, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    return image


def to_bgr(image) -> np.ndarray:
    """A contiguous BGR copy or view of a checked gray, BGR or BGRA image."""
    import cv2

    image = check_image(image)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(image)


def to_gray(image) -> np.ndarray:
    """A contiguous gray copy or view of a checked gray, BGR or BGRA image."""
    import cv2

    image = check_image(image)
    if image.ndim == 2:
        return np.ascontiguousarray(image)
    return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY)


# ----------------------------------------------------------------------------- reading image files

#: Image file name endings that ``fex apply`` picks up in a folder (what OpenCV reads).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".jp2",
                  ".pbm", ".pgm", ".ppm", ".pnm", ".sr", ".ras", ".exr", ".hdr", ".pic", ".gif")
#: Larger images are refused (from the file's header where it can be read, before decoding): the same
#: limit as :data:`fexsdk.transfer.MAX_PIXELS`.
MAX_PIXELS = 100_000_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


class TruncatedImageWarning(UserWarning):
    """An image file ends before its end-of-image marker: its lower part decodes as grey."""


def _tiff_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block; 1 when absent or unreadable."""
    import struct

    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    end = "<" if tiff[:2] == b"II" else ">"
    try:
        if struct.unpack(end + "H", tiff[2:4])[0] != 42:
            return 1
        ifd = struct.unpack(end + "I", tiff[4:8])[0]
        count = struct.unpack(end + "H", tiff[ifd : ifd + 2])[0]
        for i in range(count):
            entry = tiff[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
            tag, kind = struct.unpack(end + "HH", entry[:4])
            if tag == 0x0112 and kind == 3:  # SHORT
                value = struct.unpack(end + "H", entry[8:10])[0]
                return value if 1 <= value <= 8 else 1
    except (struct.error, IndexError):
        pass
    return 1


def _jpeg_segments(data: bytes):
    """(marker, payload start, payload end) of a JPEG's header segments, up to and including SOS."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        yield marker, pos + 4, pos + 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return
        pos += 2 + length


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, GIF or BMP header without decoding; None when not found.

    Only the first bytes are needed, so a huge image is refused before it takes memory and time.
    """
    if data.startswith(PNG_MAGIC) and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data.startswith(JPEG_MAGIC):
        for marker, start, end in _jpeg_segments(data):
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                if start + 5 > len(data):
                    return None
                return int.from_bytes(data[start + 3 : start + 5], "big"), int.from_bytes(data[start + 1 : start + 3], "big")
            if end < start:  # a length below 2: not a JPEG header
                return None
        return None
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if data[:2] == b"BM" and len(data) >= 26:
        return abs(int.from_bytes(data[18:22], "little", signed=True)), abs(int.from_bytes(data[22:26], "little", signed=True))
    return None


def check_pixels(dims: tuple[int, int] | None, source: object, max_pixels: int = MAX_PIXELS) -> None:
    """ValueError when ``dims`` (width, height) exceed ``max_pixels``; None (unknown) passes."""
    if dims is not None and dims[0] * dims[1] > max_pixels:
        raise ValueError(f"{source} is {dims[0]}x{dims[1]}, {dims[0] * dims[1]:,} pixels; the limit is "
                         f"{max_pixels:,} (resize it first)")


def exif_orientation(data: bytes) -> int:
    """EXIF orientation (1-8; 1 = upright) of a JPEG, PNG or WebP file's bytes; 1 when it has none."""
    if data[:2] == b"\xff\xd8":
        for marker, start, end in _jpeg_segments(data):
            if marker == 0xE1 and data[start : start + 6] == b"Exif\x00\x00":
                return _tiff_orientation(data[start + 6 : end])
        return 1
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        pos = 8
        while pos + 8 <= len(data):
            length = int.from_bytes(data[pos : pos + 4], "big")
            kind = data[pos + 4 : pos + 8]
            if kind == b"eXIf":
                return _tiff_orientation(data[pos + 8 : pos + 8 + length])
            if kind in (b"IDAT", b"IEND"):  # eXIf must come before the image data
                return 1
            pos += 12 + length
        return 1
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        pos = 12
        while pos + 8 <= len(data):
            kind = data[pos : pos + 4]
            length = int.from_bytes(data[pos + 4 : pos + 8], "little")
            if kind == b"EXIF":
                block = data[pos + 8 : pos + 8 + length]
                return _tiff_orientation(block[6:] if block[:6] == b"Exif\x00\x00" else block)
            pos += 8 + length + (length & 1)
    return 1


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an image stored with EXIF ``orientation`` (1-8) upright; works for any channel count and dtype."""
    if orientation == 2:
        out = image[:, ::-1]
    elif orientation == 3:
        out = image[::-1, ::-1]
    elif orientation == 4:
        out = image[::-1]
    elif orientation == 5:
        out = image.swapaxes(0, 1)
    elif orientation == 6:
        out = image.swapaxes(0, 1)[:, ::-1]
    elif orientation == 7:
        out = image.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        out = image.swapaxes(0, 1)[::-1]
    else:
        return image
    return np.ascontiguousarray(out)


def truncation(data: bytes) -> str | None:
    """Why a JPEG or PNG file's bytes look cut short (a sentence), or None when they look complete.

    A JPEG must have its end-of-image marker after the main image's scan data (bytes after it,
    such as the video of a "motion photo", are fine); a PNG must have its IEND chunk.
    """
    if data[:2] == b"\xff\xd8":
        scan = None
        for marker, start, end in _jpeg_segments(data):
            if marker == 0xDA:
                scan = end
        if scan is None:
            return "the JPEG ends inside its header"
        if data.find(b"\xff\xd9", scan) < 0:
            return "the JPEG has no end-of-image marker"
        return None
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return None if b"IEND" in data[-4096:] else "the PNG has no IEND chunk"
    return None


def read_image(path, truncated: str = "warn", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as stored (any bit depth; gray, BGR or BGRA, alpha kept) and upright.

    OpenCV's ``IMREAD_UNCHANGED`` keeps alpha and 16-bit samples but ignores the EXIF
    orientation that phones write; it is applied here (JPEG, PNG and WebP). A JPEG or PNG
    that ends early decodes with a grey lower part: ``truncated="warn"`` (default) warns
    with :class:`TruncatedImageWarning` and returns it, ``"error"`` raises ``ValueError``,
    ``"ignore"`` returns it silently. Raises ``FileNotFoundError`` or ``ValueError``
    (a folder, a device or FIFO, a file OpenCV cannot read, an animation of several frames, or
    an image over ``max_pixels``, refused from its header before decoding where the format allows).
    """
    import warnings
    from pathlib import Path

    import cv2

    if truncated not in ("warn", "error", "ignore"):
        raise ValueError(f"truncated must be 'warn', 'error' or 'ignore', got {truncated!r}")
    path = Path(path)
    check_image_file(path)
    with open(path, "rb") as f:  # the header first: a huge image is refused before it is read or decoded
        check_pixels(image_dimensions(f.read(64 * 1024)), path, max_pixels)
    data = path.read_bytes()
    why = truncation(data)
    if why is not None and truncated != "ignore":
        message = f"{path} is truncated ({why}): its lower part would be grey; re-copy or re-export it"
        if truncated == "error":
            raise ValueError(message)
        warnings.warn(message, TruncatedImageWarning, stacklevel=2)
    try:
        frames = cv2.imcount(str(path))
        # imread, not imdecode: for a truncated JPEG imdecode gives None where imread gives the grey-bottomed image.
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # e.g. a codec built in but disabled (OpenEXR)
        raise ValueError(f"{path} is not an image OpenCV can read here ({str(exc).strip().splitlines()[-1]})") from None
    if image is None:
        raise ValueError(f"{path} is not an image OpenCV can read")
    if frames > 1:  # an animated GIF or a multi-page TIFF: only its first image would be changed
        raise ValueError(f"{path} holds {frames} images (an animation or pages); fexsdk changes one still image "
                         "per file: save the frames as separate images (or a video for fex demo)")
    check_pixels((image.shape[1], image.shape[0]), path, max_pixels)
    return apply_orientation(image, exif_orientation(data))


def check_image_file(path) -> None:
    """FileNotFoundError or ValueError unless ``path`` is a regular file: a folder, a device such as
    /dev/zero or a FIFO would otherwise be read forever or reported as missing."""
    import stat
    from pathlib import Path

    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except OSError as exc:
        raise ValueError(f"{path} cannot be read: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise ValueError(f"{path} is a folder, not an image file")
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) \
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
        raise ValueError(f"{path} is {kind}, not an image file; give an image file (.jpg, .png, ...)")


def expand_inputs(specs) -> list:
    """Image files named by ``specs``: files as given, folders' image files (sorted, not recursive),
    glob patterns (``photos/*.jpg``, ``**`` recursive) expanded and sorted. Duplicates are dropped.
    Raises ``FileNotFoundError`` for a name or pattern that matches nothing."""
    import glob
    from pathlib import Path

    out, seen = [], set()
    for spec in specs:
        spec = str(spec)
        p = Path(spec)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES[:5])}, ...) in folder {p}")
        elif p.is_file():
            found = [p]
        elif glob.has_magic(spec):
            found = sorted(Path(f) for f in glob.glob(spec, recursive=True) if Path(f).is_file())
            if not found:
                raise FileNotFoundError(f"no file matches {spec}")
        else:
            raise FileNotFoundError(f"image file not found: {spec}")
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


def can_write(suffix: str) -> bool:
    """Whether OpenCV writes images with this suffix here. A codec can be built in but disabled
    (OpenEXR without OPENCV_IO_ENABLE_OPENEXR), which haveImageWriter does not see: a tiny image is
    encoded too, so the refusal comes before any work rather than as a traceback after it."""
    import cv2

    if not suffix:
        return False
    try:
        return cv2.haveImageWriter("x" + suffix) and bool(cv2.imencode(suffix, np.zeros((2, 2, 3), np.uint8))[0])
    except cv2.error:
        return False


def output_names(inputs, folder) -> list:
    """One output path in ``folder`` per input: its file name, with ``-2``, ``-3``... added where two
    inputs share a name. A suffix OpenCV cannot write becomes ``.png``."""
    from pathlib import Path

    folder = Path(folder)
    used: set[str] = set()
    out = []
    for src in inputs:
        src = Path(src)
        suffix = src.suffix if can_write(src.suffix) else ".png"
        name, k = src.stem + suffix, 1
        while name.lower() in used:
            k += 1
            name = f"{src.stem}-{k}{suffix}"
        used.add(name.lower())
        out.append(folder / name)
    return out
