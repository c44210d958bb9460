"""Requests in, replies out, without Ray: multipart and JSON bodies, images, and the fields ``emotion``, ``seed``,
``strength``, ``faces`` and ``targets``; every refusal an :class:`HTTPError` naming the problem."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from fexsdk.images import JPEG_MAGIC, PNG_MAGIC, image_dimensions

NPY_MAGIC = b"\x93NUMPY"


class HTTPError(Exception):
    """A request the service refuses: an HTTP status and a message naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Reply:
    status: int
    body: bytes
    media_type: str
    headers: dict[str, str]


def _json_reply(obj: Any, status: int = 200, headers: Optional[dict[str, str]] = None) -> Reply:
    return Reply(status, json.dumps(obj).encode("utf-8"), "application/json", dict(headers or {}))


def _error_reply(status: int, message: str) -> Reply:
    return _json_reply({"error": message, "status": status}, status)


# -- parsing requests ---------------------------------------------------------
def parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """The fields of a ``multipart/form-data`` body, in memory: {name: bytes} (the first of each name)."""
    boundary = None
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        raise HTTPError(400, "multipart body without a boundary in its Content-Type")
    delim = b"--" + boundary.encode("latin-1")
    fields: dict[str, bytes] = {}
    for chunk in body.split(delim)[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        if chunk.startswith(b"\r\n"):
            chunk = chunk[2:]
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise HTTPError(400, "malformed multipart body: a part has no blank line after its headers")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        name = None
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-disposition":
                for param in value.split(";")[1:]:
                    k, _, v = param.strip().partition("=")
                    if k.strip().lower() == "name":
                        name = v.strip().strip('"')
        if name is not None and name not in fields:
            fields[name] = content
    return fields


def image_format(data: bytes) -> str:
    """'png' or 'jpeg' from the first bytes; HTTPError 415 otherwise."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    raise HTTPError(415, "undecodable image: the body is neither JPEG nor PNG (send the file's bytes, or multipart "
                         "with an 'image' file)")


def decode_image(data: bytes, max_pixels: int) -> tuple[np.ndarray, str]:
    """JPEG/PNG bytes -> (uint8 gray/BGR/BGRA array, format), refusing images over ``max_pixels`` before decoding."""
    import cv2

    if not data:
        raise HTTPError(400, "no image: the request has an empty body (send a JPEG or PNG)")
    fmt = image_format(data)
    dims = image_dimensions(data)
    if dims is not None and dims[0] * dims[1] > max_pixels:
        raise HTTPError(413, f"image too large: {dims[0]}x{dims[1]} is {dims[0] * dims[1]:,} pixels; "
                             f"the limit is {max_pixels:,}")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise HTTPError(400, f"undecodable image: the {fmt.upper()} data is corrupt or truncated")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise HTTPError(413, f"image too large: {image.shape[1]}x{image.shape[0]} is {image.shape[0] * image.shape[1]:,} "
                             f"pixels; the limit is {max_pixels:,}")
    if image.dtype == np.uint16:  # 16-bit PNG: the runtime works on 8 bits
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise HTTPError(400, f"undecodable image: unsupported sample type {image.dtype}")
    return image, fmt


def encode_image(image: np.ndarray, fmt: str, jpeg_quality: int = 95) -> bytes:
    import cv2

    if fmt == "png":
        ok, buf = cv2.imencode(".png", image)
    else:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    if not ok:
        raise RuntimeError(f"could not encode the result as {fmt}")
    return buf.tobytes()


def _parse_emotion(text: Optional[str]):
    """The ``emotion`` field, read as ``fex apply -e`` reads it (:func:`fexsdk.emotions.parse_target`); HTTPError 400."""
    from fexsdk.emotions import parse_target

    try:
        return parse_target(text)
    except ValueError as exc:
        raise HTTPError(400, str(exc)) from None


def _parse_seed(text: Optional[str]) -> Optional[int]:
    if text is None or str(text).strip() == "":
        return None
    try:
        seed = int(str(text).strip())
    except ValueError:
        raise HTTPError(400, f"bad seed {text!r}: expected an integer") from None
    if seed < 0:
        raise HTTPError(400, f"bad seed {seed}: expected an integer >= 0")
    return seed


def _parse_strength(text: Optional[str]) -> Optional[float]:
    if text is None or str(text).strip() == "":
        return None  # the model's default strength for the emotion
    try:
        value = float(str(text).strip())
    except ValueError:
        raise HTTPError(400, f"bad strength {text!r}: expected a number >= 0") from None
    if not np.isfinite(value) or value < 0:
        raise HTTPError(400, f"bad strength {text!r}: expected a finite number >= 0")
    return value


def _parse_faces(value: Any):
    """The ``faces`` field: JSON boxes ``[[x, y, w, h], ...]``, face indices ``[0, 2]`` (left to right, as
    ``Transfer.apply`` numbers them), ``"largest"``, or ``"all"`` / nothing (every face found)."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "all")):
        return None
    if isinstance(value, str) and value.strip() == "largest":
        return "largest"
    expected = 'expected JSON [[x, y, w, h], ...], face indices such as [0, 2] (left to right), "largest" or "all"'
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError:
            raise HTTPError(400, f"bad faces {value!r}: {expected}") from None
    if (isinstance(value, list) and value
            and all(isinstance(i, int) and not isinstance(i, bool) for i in value)):
        if any(i < 0 for i in value):
            raise HTTPError(400, f"bad faces {value!r}: face indices are >= 0 (0 is the leftmost face)")
        return value
    if not isinstance(value, list) or not all(
            isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)
            for b in value):
        raise HTTPError(400, f"bad faces {value!r}: {expected}")
    for b in value:
        if not (b[2] > 0 and b[3] > 0):
            raise HTTPError(400, f"bad faces: box {b} needs a positive width and height")
    return value


def _parse_targets(text: Optional[str]) -> Optional[list]:
    if text is None or not str(text).strip():
        return None
    try:
        items = json.loads(text)
    except ValueError:
        raise HTTPError(400, f"bad targets {text!r}: expected a JSON list, one target per crop") from None
    if not isinstance(items, list):
        raise HTTPError(400, f"bad targets {text!r}: expected a JSON list, one target per crop")
    out = []
    for item in items:
        if isinstance(item, dict):
            try:
                from fexsdk.emotions import target_vector

                target_vector(item)
            except ValueError as exc:
                raise HTTPError(400, f"bad intensities in targets: {exc}") from None
            out.append(item)
        elif isinstance(item, (str, int)) and not isinstance(item, bool):
            out.append(_parse_emotion(str(item)))
        else:
            raise HTTPError(400, f"bad target {item!r} in targets: expected a name, an index or {{name: intensity}}")
    return out


@dataclass
class ParsedRequest:
    data: bytes
    fields: dict[str, str]


def _text(value: bytes, name: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, f"field {name!r} is not UTF-8 text") from None


def parse_request(body: bytes, content_type: str, query: Mapping[str, str], file_field: str) -> ParsedRequest:
    """Split a request into its payload (``file_field`` of a multipart body, or the raw body) and its text fields.

    Text fields come from the query string, then multipart fields, then a JSON body's keys (the payload of a
    JSON body is base64 under ``file_field``).
    """
    fields = {k: v for k, v in query.items()}
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        parts = parse_multipart(body, content_type)
        data = parts.pop(file_field, b"")
        for k, v in parts.items():
            fields[k] = _text(v, k)
        return ParsedRequest(data, fields)
    if ctype == "application/json":
        try:
            obj = json.loads(body.decode("utf-8")) if body else {}
        except (UnicodeDecodeError, ValueError) as exc:
            raise HTTPError(400, f"the JSON body is not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise HTTPError(400, "the JSON body must be an object")
        raw = obj.pop(file_field, None)
        data = b""
        if raw is not None:
            if not isinstance(raw, str):
                raise HTTPError(400, f"{file_field!r} must be a base64 string")
            try:
                data = base64.b64decode(raw.split(",", 1)[-1] if raw.startswith("data:") else raw, validate=True)
            except (binascii.Error, ValueError):
                raise HTTPError(400, f"undecodable image: {file_field!r} is not valid base64") from None
        for k, v in obj.items():
            fields[k] = v if isinstance(v, str) else json.dumps(v)
        return ParsedRequest(data, fields)
    return ParsedRequest(body, fields)
