"""Model metadata: what the runtime needs to know about a generator, stored in the file.

The exporter writes a :class:`ModelMetadata` into the ONNX file's
``metadata_props`` (key ``fexsdk``, JSON) or in front of a TensorRT engine as a
length-prefixed JSON header; the runtime reads it back and never guesses.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

from fexsdk._version import __version__
from fexsdk.emotions import EMOTIONS

#: Key under which the JSON sits in ONNX ``metadata_props``.
ONNX_KEY = "fexsdk"
#: Bumped when the meaning of a field changes.
FORMAT_VERSION = 1
#: Magic bytes that start an engine file written by fexsdk.
ENGINE_MAGIC = b"FEXE"


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
    #: Pixel normalisation: model value = pixel / 127.5 - 1.
    normalization: str = "pixel/127.5-1"
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
    #: Filled for TensorRT engines only.
    engine: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def noise_size(self) -> int:
        return sum(site.size for site in self.noise_sites)

    def label_for(self, emotion_vectors, domain: int = 0):
        """Build the generator's label input from (B, 7) emotion vectors for one domain.

        With several domains the layout is StarGAN's mask vector:
        ``[emotions of domain 0, emotions of domain 1, ..., one-hot domain mask]``.
        """
        import numpy as np

        vec = np.asarray(emotion_vectors, dtype=np.float32)
        if len(self.domains) == 1:
            return vec
        if not 0 <= domain < len(self.domains):
            raise ValueError(f"domain {domain} is out of range; this model has domains {self.domains}")
        n, k = vec.shape[0], len(self.emotions)
        out = np.zeros((n, self.label_dim), dtype=np.float32)
        out[:, domain * k : (domain + 1) * k] = vec
        out[:, len(self.domains) * k + domain] = 1.0
        return out

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
        expected = len(self.emotions) * len(self.domains) + (len(self.domains) if len(self.domains) > 1 else 0)
        if self.label_dim != expected:
            raise ValueError(f"model label_dim {self.label_dim} does not match {len(self.domains)} domain(s) ({expected})")
        if self.noise_sites and not 0 < self.dropout_p < 1:
            raise ValueError(f"model has dropout sites but dropout_p={self.dropout_p}")
        if "output" not in self.outputs or not set(self.outputs) <= set(ALL_OUTPUTS):
            raise ValueError(f"model outputs {self.outputs} must include 'output' and be among {ALL_OUTPUTS}")
        if self.is_warp and set(self.outputs) != set(ALL_OUTPUTS):
            raise ValueError(f"a warp model needs outputs {ALL_OUTPUTS}, the file lists {self.outputs}")

    @property
    def is_warp(self) -> bool:
        """Whether the model moves pixels (flow + masked residual) rather than painting the image."""
        return any(o in self.outputs for o in WARP_OUTPUTS)


def read_onnx_metadata(path) -> ModelMetadata:
    """Metadata of an fexsdk ONNX file, read with the onnx package when present, else onnxruntime (no torch)."""
    try:
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except ImportError:
        import onnxruntime as ort

        props = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    if ONNX_KEY not in props:
        raise ValueError(f"{path} has no fexsdk metadata; export it with `fex export onnx`")
    return ModelMetadata.from_json(props[ONNX_KEY])


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
