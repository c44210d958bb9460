"""Checkpoints: written atomically, read without unpickling code.

A checkpoint is a ``torch.save`` of plain tensors, numbers, strings and dicts;
it is loaded with ``weights_only=True`` so a file cannot run code on load.

A generator checkpoint carries its runtime metadata (``metadata``: the JSON of
:class:`fexsdk.metadata.ModelMetadata`, written by :func:`save_checkpoint`), the same object
the ONNX export writes into its file and the bundled model's card is made from.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from fexsdk.emotions import EMOTIONS
from fexsdk.metadata import ModelMetadata, NoiseSite
from fexsdk.training.models import Generator, GeneratorConfig

#: Bumped when the layout of a checkpoint changes.
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write to a temp file in the same folder, then rename: a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "generator_config" in payload and "metadata" not in payload:
        payload = {**payload, "metadata": metadata_from_checkpoint(payload).to_json()}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"checkpoint_version": CHECKPOINT_VERSION, **payload}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a fexsdk training checkpoint, with clear errors for missing, corrupt or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        # Not torch's text: for a pickled object it is a page of advice on weights_only=False, which
        # fexsdk never uses (a checkpoint must not be able to run code).
        raise ValueError(f"{path} is not a readable fexsdk checkpoint ({type(exc).__name__}); fexsdk reads the "
                         "checkpoints `fex train` writes (tensors and plain values only)") from None
    if not isinstance(ckpt, dict) or "checkpoint_version" not in ckpt or "generator_config" not in ckpt:
        raise ValueError(f"{path} is not a fexsdk training checkpoint (no generator_config); was it written by `fex train`?")
    if ckpt["checkpoint_version"] > CHECKPOINT_VERSION:
        raise ValueError(f"{path} was written by a newer fexsdk (checkpoint version {ckpt['checkpoint_version']})")
    return ckpt


def generator_config(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The generator's constructor arguments, with defaults filled in for checkpoints of older versions."""
    return asdict(GeneratorConfig.from_saved(ckpt["generator_config"]))


def generator_from_checkpoint(ckpt: dict[str, Any] | str | os.PathLike, ema: bool = True) -> Generator:
    """Rebuild the generator a checkpoint describes and load its weights.

    ``ema``: use the exponential moving average of G's weights where the checkpoint has one
    (smoother, better samples); the live training weights otherwise.
    """
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    G = Generator(**generator_config(ckpt))
    weights = ckpt["G_ema"] if ema and ckpt.get("G_ema") is not None else ckpt["G"]
    try:
        G.load_state_dict(weights)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint weights do not fit its generator config: {exc}") from None
    return G


def metadata_for(G: Generator, ckpt: dict[str, Any], precision: str = "fp32") -> ModelMetadata:
    """The runtime metadata of a generator and its checkpoint's record (preset, domains, commit, step)."""
    cfg = G.config
    meta = ModelMetadata(
        emotions=list(ckpt.get("emotions", EMOTIONS)),
        image_size=cfg.image_size,
        channels=cfg.in_channels,
        preset=str(ckpt.get("preset", "")),
        dropout_p=cfg.dropout_p if G.dropout_sites() else 0.0,
        noise_sites=[NoiseSite(m.name, tuple(int(v) for v in m.shape)) for m in G.dropout_sites()],
        domains=list(ckpt.get("domains", ["fer2013"])),
        label_dim=cfg.label_dim,
        training_commit=str(ckpt.get("commit", "")),
        training_step=int(ckpt.get("step", 0)),
        precision=precision,
        outputs=["output", "flow", "residual", "mask"] if cfg.output == "warp" else ["output"],
        generator_config=asdict(cfg),
    )
    meta.validate()
    return meta


def metadata_from_checkpoint(ckpt: dict[str, Any], precision: str = "fp32") -> ModelMetadata:
    """The metadata a checkpoint carries; for checkpoints written before it did, rebuilt from its generator config."""
    saved = ckpt.get("metadata")
    if saved:
        meta = ModelMetadata.from_json(saved)
        # The step and commit of this very file (a slimmed or renamed copy keeps its own).
        meta.training_step = int(ckpt.get("step", meta.training_step))
        meta.precision = precision
        return meta
    # Building the generator draws its initial weights: keep the global RNG as it was, so that writing a
    # checkpoint mid-run does not change the run (exact resume).
    with torch.random.fork_rng(devices=[]):
        G = Generator(**generator_config(ckpt))
    return metadata_for(G, ckpt, precision)


def checkpoint_from_onnx(path: str | os.PathLike) -> dict[str, Any]:
    """A slim checkpoint rebuilt from an exported ONNX file: its generator config and its weights.

    The exporter keeps PyTorch's parameter names (``G.<name>``) on the initializers and writes the
    generator config into the metadata, so the PyTorch model of any exported file (the bundled one
    included) can be rebuilt exactly, e.g. for the PyTorch eager rows of ``benchmarks/latency.py``.
    """
    import onnx
    from onnx import numpy_helper

    from fexsdk.metadata import read_metadata

    meta = read_metadata(path)
    if not meta.generator_config:
        raise ValueError(f"{path} has no generator_config in its metadata; re-export it with `fex export onnx`")
    G = Generator(**asdict(GeneratorConfig.from_saved(meta.generator_config)))
    wanted = G.state_dict()
    found = {init.name[2:]: init for init in onnx.load(str(path)).graph.initializer if init.name.startswith("G.")}
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise ValueError(f"{path} lacks the weights {missing[:4]}{'...' if len(missing) > 4 else ''}; "
                         "was it exported by `fex export onnx` without graph optimisation?")
    weights = {k: torch.from_numpy(numpy_helper.to_array(found[k]).copy()) for k in wanted}
    return {"checkpoint_version": CHECKPOINT_VERSION, "generator_config": asdict(G.config), "G": weights,
            "preset": meta.preset, "emotions": list(meta.emotions), "domains": list(meta.domains),
            "step": meta.training_step, "commit": meta.training_commit, "metadata": meta.to_json(), "slim": True}


def save_discriminator(ckpt: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a training checkpoint's D as FP32 safetensors, its config in the file's metadata.

    Why: an exported ONNX file holds G only, and a fresh D beside a trained G needs about an hour of
    D-only steps on a CPU before G can learn from it. Shipped next to a bundled generator, this small
    file (under 3 MB) lets ``fex train --init-from MODEL.onnx --init-discriminator FILE`` start warm.
    """
    from safetensors.torch import save_file

    if "D" not in ckpt or "discriminator_config" not in ckpt:
        raise ValueError("this checkpoint holds no discriminator (an exported or slim one?); "
                         "give the last.pt or best.pt that `fex train` wrote")
    tensors = {k: v.detach().float().contiguous() if v.is_floating_point() else v.contiguous()
               for k, v in ckpt["D"].items()}
    meta = {"discriminator_config": json.dumps(ckpt["discriminator_config"]), "emotions": json.dumps(list(EMOTIONS)),
            "preset": str(ckpt.get("preset", "")), "step": str(ckpt.get("step", "")),
            "commit": str(ckpt.get("commit", ""))}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def load_discriminator(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The (config, state dict) that :func:`save_discriminator` wrote, with clear errors for other files."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"discriminator not found: {path}")
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a discriminator file is the .safetensors that "
                         "`python -m fexsdk.export.bundle ... --discriminator FILE` writes")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "discriminator_config" not in meta:
        raise ValueError(f"{path} is not an fexsdk discriminator (no discriminator_config metadata)")
    if json.loads(meta.get("emotions", "[]")) != list(EMOTIONS):
        raise ValueError(f"{path}: its emotion list differs from fexsdk's {list(EMOTIONS)}")
    return json.loads(meta["discriminator_config"]), load_file(str(path))
