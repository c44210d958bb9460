"""Model metadata: what the runtime needs to know about a generator, stored in the file.

The exporter writes a :class:`ModelMetadata` into the ONNX file's
``metadata_props`` (key ``fexsdk``, JSON) or in front of a TensorRT engine as a
length-prefixed JSON header; the runtime reads it back and never guesses.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from fexsdk._version import __version__
from fexsdk.emotions import EMOTIONS

#: Key under which the JSON sits in ONNX ``metadata_props``.
ONNX_KEY = "fexsdk"
#: Bumped when the meaning of a field changes.
FORMAT_VERSION = 1
#: Magic bytes that start an engine file written by fexsdk.
ENGINE_MAGIC = b"FEXE"
#: The normalisation every fexsdk model so far uses: model value = pixel / 127.5 - 1.
DEFAULT_NORMALIZATION = "pixel/127.5-1"
_NORMALIZATION = re.compile(r"^pixel/([0-9]*\.?[0-9]+)-([0-9]*\.?[0-9]+)$")


def bad_strengths(strengths: dict) -> dict:
    """The entries of an emotion -> strength mapping that are not an emotion mapped to a number in [0, 2]."""
    return {k: v for k, v in strengths.items()
            if k not in EMOTIONS or isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 2}


@dataclass
class NoiseSite:
    """One dropout site: its name and the per-sample shape (C, H, W) of its keep-mask."""

    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= int(s)
        return n


#: Outputs a warp-head generator adds to "output".
WARP_OUTPUTS = ("flow", "residual", "mask")
ALL_OUTPUTS = ("output", *WARP_OUTPUTS)


def parse_normalization(text: str) -> tuple[float, float]:
    """``"pixel/S-O"`` -> (S, O): model value = pixel / S - O. Anything else is a ValueError."""
    m = _NORMALIZATION.match(str(text).replace(" ", ""))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"model normalization {text!r} is not of the form 'pixel/SCALE-OFFSET' (e.g. {DEFAULT_NORMALIZATION!r})")
    return float(m.group(1)), float(m.group(2))


#: Pixel units per model unit of the default normalisation (paste-back's default scale).
PIXEL_SCALE = parse_normalization(DEFAULT_NORMALIZATION)[0]


def normalize(pixels, normalization: str = DEFAULT_NORMALIZATION):
    """Pixels (a float numpy array or torch tensor) -> model values, as ``normalization`` says."""
    scale, offset = parse_normalization(normalization)
    return pixels / scale - offset


def denormalize(values, normalization: str = DEFAULT_NORMALIZATION):
    """Model values -> float pixels (not rounded or clipped), the inverse of :func:`normalize`."""
    scale, offset = parse_normalization(normalization)
    return (values + offset) * scale


def label_dim_for(n_emotions: int, n_domains: int) -> int:
    """Width of the generator's label: the emotions of every domain, plus the domain mask when there are several."""
    return n_emotions * n_domains + (n_domains if n_domains > 1 else 0)


def label_layout(emotion_vectors, domain: int, n_domains: int) -> np.ndarray:
    """The generator's label input from (B, K) emotion vectors of one domain (the trainer uses it too).

    One domain: the vectors themselves. Several: StarGAN's mask vector,
    ``[emotions of domain 0, emotions of domain 1, ..., one-hot domain mask]``.
    """
    vec = np.asarray(emotion_vectors, dtype=np.float32)
    if n_domains == 1:
        return vec
    if not 0 <= domain < n_domains:
        raise ValueError(f"domain {domain} is out of range for {n_domains} domains")
    n, k = vec.shape
    out = np.zeros((n, label_dim_for(k, n_domains)), dtype=np.float32)
    out[:, domain * k : (domain + 1) * k] = vec
    out[:, n_domains * k + domain] = 1.0
    return out


@dataclass
class ModelMetadata:
    """Everything the runtime reads from a model file.

    Inputs of the generator graph: ``image`` (B, channels, size, size) in
    [-1, 1] (pixel / 127.5 - 1), ``label`` (B, label_dim) and, when the model has
    dropout, ``noise`` (B, noise_size): the dropout multipliers, 0 (dropped) or
    1/(1-p) (kept), for every site in ``noise_sites`` order, flattened and
    concatenated. All ones turns dropout off (identical to PyTorch eval mode). Output ``output`` has the image's shape.
    """

    emotions: list[str] = field(default_factory=lambda: list(EMOTIONS))
    image_size: int = 48
    channels: int = 1
    #: Pixel normalisation: model value = pixel / 127.5 - 1 (read by :meth:`to_model` / :meth:`to_pixels`).
    normalization: str = DEFAULT_NORMALIZATION
    preset: str = ""
    dropout_p: float = 0.0
    noise_sites: list[NoiseSite] = field(default_factory=list)
    #: Data-set domains trained jointly through the mask vector; the first is the default.
    domains: list[str] = field(default_factory=lambda: ["fer2013"])
    label_dim: int = len(EMOTIONS)
    fexsdk_version: str = __version__
    training_commit: str = ""
    training_step: int = 0
    precision: str = "fp32"
    #: Graph outputs: "output" (the image) always; warp-head models add "flow" (B, 2, S, S) displacement
    #: in [-1, 1] grid units (pixels = flow * S / 2), "residual" (B, C, S, S) the masked painted change
    #: on top of the warped input, and "mask" (B, 1, S, S).
    outputs: list[str] = field(default_factory=lambda: ["output"])
    #: The generator's constructor arguments (training.models.GeneratorConfig), for the record.
    generator_config: dict[str, Any] = field(default_factory=dict)
    #: Filled for TensorRT engines only.
    engine: dict[str, Any] = field(default_factory=dict)
    #: The strength each target emotion is applied with when the caller gives none (missing: 1.0), chosen
    #: on the real-photo benchmark (benchmarks/believable.py) where full strength reads as exaggerated.
    default_strength: dict[str, float] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def noise_size(self) -> int:
        return sum(site.size for site in self.noise_sites)

    def label_for(self, emotion_vectors, domain: int = 0) -> np.ndarray:
        """The generator's label input from (B, 7) emotion vectors for one domain (see :func:`label_layout`)."""
        if len(self.domains) > 1 and not 0 <= domain < len(self.domains):
            raise ValueError(f"domain {domain} is out of range; this model has domains {self.domains}")
        return label_layout(emotion_vectors, domain, len(self.domains))

    # -- normalisation --------------------------------------------------
    @property
    def pixel_scale(self) -> float:
        """Pixel units per model unit (127.5 for ``pixel/127.5-1``)."""
        return parse_normalization(self.normalization)[0]

    @property
    def pixel_offset(self) -> float:
        """Model value of pixel 0, negated (1 for ``pixel/127.5-1``)."""
        return parse_normalization(self.normalization)[1]

    def to_model(self, pixels) -> np.ndarray:
        """uint8 (or float) pixels -> float32 model values."""
        return normalize(np.asarray(pixels).astype(np.float32), self.normalization).astype(np.float32, copy=False)

    def to_pixels(self, values) -> np.ndarray:
        """Model values -> uint8 pixels (rounded, clipped to [0, 255])."""
        x = denormalize(np.asarray(values, np.float32), self.normalization)
        return np.clip(x + 0.5, 0, 255).astype(np.uint8)

    def feeds(self, image, label, noise: Optional[np.ndarray]) -> dict[str, np.ndarray]:
        """The generator graph's inputs by name, contiguous float32 (``noise`` only for a model with dropout)."""
        feeds = {"image": np.ascontiguousarray(image, np.float32), "label": np.ascontiguousarray(label, np.float32)}
        if self.noise_size:
            if noise is None:
                raise ValueError("this model has test-time dropout: pass its noise (see fexsdk.noise.noise_for)")
            feeds["noise"] = np.ascontiguousarray(noise, np.float32)
        return feeds

    # -- serialisation -------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelMetadata":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"model metadata is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError("model metadata must be a JSON object")
        version = raw.get("format_version", 0)
        if version > FORMAT_VERSION:
            raise ValueError(
                f"model metadata format {version} is newer than this fexsdk understands ({FORMAT_VERSION}); upgrade fexsdk"
            )
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in raw.items() if k in known}
        kwargs["noise_sites"] = [NoiseSite(s["name"], tuple(s["shape"])) for s in raw.get("noise_sites", [])]
        meta = cls(**kwargs)
        meta.validate()
        return meta

    def validate(self) -> None:
        """Refuse metadata the runtime could not use correctly."""
        if list(self.emotions) != list(EMOTIONS):
            raise ValueError(f"model emotions {self.emotions} differ from fexsdk's {list(EMOTIONS)}")
        if self.channels not in (1, 3):
            raise ValueError(f"model channels must be 1 or 3, got {self.channels}")
        if self.image_size <= 0:
            raise ValueError(f"model image_size must be positive, got {self.image_size}")
        parse_normalization(self.normalization)
        expected = label_dim_for(len(self.emotions), len(self.domains))
        if self.label_dim != expected:
            raise ValueError(f"model label_dim {self.label_dim} does not match {len(self.domains)} domain(s) ({expected})")
        if self.noise_sites and not 0 < self.dropout_p < 1:
            raise ValueError(f"model has dropout sites but dropout_p={self.dropout_p}")
        if "output" not in self.outputs or not set(self.outputs) <= set(ALL_OUTPUTS):
            raise ValueError(f"model outputs {self.outputs} must include 'output' and be among {ALL_OUTPUTS}")
        bad = bad_strengths(self.default_strength)
        if bad:
            raise ValueError(f"model default_strength {bad} must map emotions {list(EMOTIONS)} to numbers in [0, 2]")
        if self.is_warp and set(self.outputs) != set(ALL_OUTPUTS):
            raise ValueError(f"a warp model needs outputs {ALL_OUTPUTS}, the file lists {self.outputs}")

    def strength_for(self, emotion_vectors: np.ndarray) -> np.ndarray:
        """(N,) default strengths of (N, 7) target vectors: each emotion's :attr:`default_strength`, weighted by intensity."""
        table = np.array([self.default_strength.get(e, 1.0) for e in self.emotions], np.float32)
        w = np.abs(np.asarray(emotion_vectors, np.float32))
        total = w.sum(axis=1)
        return np.where(total > 0, (w @ table) / np.maximum(total, 1e-12), 1.0).astype(np.float32)

    @property
    def is_warp(self) -> bool:
        """Whether the model moves pixels (flow + masked residual) rather than painting the image."""
        return any(o in self.outputs for o in WARP_OUTPUTS)


def from_props(props: dict[str, str], source: object = "the model") -> ModelMetadata:
    """Metadata from ONNX ``metadata_props`` (or onnxruntime's custom metadata map)."""
    if ONNX_KEY not in props:
        raise ValueError(f"{source} has no fexsdk metadata (emotions, size, noise layout); export it with `fex export onnx`")
    return ModelMetadata.from_json(props[ONNX_KEY])


def read_metadata(path: str | os.PathLike) -> ModelMetadata:
    """The one reader of model metadata, for every format in :mod:`fexsdk.formats` (the runtime's ONNX
    and TensorRT files, and the formats registered by the packages above it, such as training checkpoints)."""
    from fexsdk import formats

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    fmt = formats.format_of(path)
    if fmt is None or fmt.reader is None:
        raise ValueError(f"cannot read model metadata from {path.name!r}: no reader for {path.suffix.lower()!r} files "
                         f"(known: {', '.join(formats.known_suffixes())})")
    return fmt.reader(path)


def read_engine_metadata(path) -> ModelMetadata:
    """Metadata of an fexsdk TensorRT engine file: its header alone is read."""
    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<I", head[4:8])[0] if len(head) == 8 and head[:4] == ENGINE_MAGIC else 0
        meta, _ = unpack_engine(head + f.read(length))
    return meta


def read_onnx_metadata(path) -> ModelMetadata:
    """Metadata of an fexsdk ONNX file, read with the onnx package when present, else onnxruntime (no torch)."""
    try:
        try:
            import onnx

            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        except ImportError:
            import onnxruntime as ort

            props = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    except Exception as exc:  # protobuf's DecodeError, onnxruntime's own errors: never a traceback
        raise ValueError(f"{path} is not a readable ONNX model ({type(exc).__name__}): the file is truncated, "
                         "damaged or not ONNX") from None
    return from_props(props, path)


# -- TensorRT engine header ------------------------------------------------
def pack_engine(meta: ModelMetadata, engine_bytes: bytes) -> bytes:
    """Engine file = magic + uint32 little-endian JSON length + JSON + serialized engine."""
    blob = meta.to_json().encode("utf-8")
    return ENGINE_MAGIC + struct.pack("<I", len(blob)) + blob + bytes(engine_bytes)


def unpack_engine(data: bytes) -> tuple[ModelMetadata, bytes]:
    """Split an fexsdk engine file into its metadata and the serialized engine."""
    if len(data) < 8 or data[:4] != ENGINE_MAGIC:
        raise ValueError("not an fexsdk engine file (no metadata header); build it with `fex export engine`")
    (length,) = struct.unpack("<I", data[4:8])
    if 8 + length > len(data):
        raise ValueError("engine file is truncated: its metadata header is longer than the file")
    meta = ModelMetadata.from_json(data[8 : 8 + length].decode("utf-8"))
    return meta, data[8 + length :]
