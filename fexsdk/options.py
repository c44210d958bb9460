""":class:`TransferOptions`, the options a :class:`~fexsdk.transfer.Transfer` is built with, and the one place
that declares them as ``fex`` command-line flags (:func:`add_transfer_arguments`).

Light on purpose (argparse and dataclasses only): ``fex --help`` builds every subcommand's parser
without loading OpenCV or onnxruntime. ``Transfer.from_options`` turns the options into a Transfer.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

#: Where a model runs (``Transfer(device=)``, ``--device``).
DEVICES = ("auto", "cpu", "cuda")
#: How a face's change is put back (``Transfer(blend=)``, ``--blend``; fexsdk.paste.BLEND_MODES).
BLENDS = ("residual", "replace")
#: The smallest ``detect_size`` (pixels on the longer side of the copy YuNet sees).
MIN_DETECT_SIZE = 32


@dataclass
class TransferOptions:
    """How a :class:`~fexsdk.transfer.Transfer` is built and used: :meth:`Transfer.from_options
    <fexsdk.transfer.Transfer.from_options>` builds one; ``fex apply``, ``fex grid``, ``fex demo`` and ``fex serve``
    read theirs from the command line (:func:`add_transfer_arguments`, :meth:`from_args`), and
    :class:`fexsdk.video.DemoConfig` and :class:`fexsdk.serve.ServeOptions` hold one.

    ``model``, ``device``, ``detector``, ``blend``, ``threads``, ``smooth``, ``align``, ``exposure`` and
    ``skip_unsuitable`` are :class:`~fexsdk.transfer.Transfer`'s arguments of the same names. ``detect_size``: the
    face detector (YuNet) sees a copy of the image at most this many pixels on its longer side (None: the
    detector's own size; :meth:`Transfer.clone <fexsdk.transfer.Transfer.clone>`). ``strength``: the change's
    scale for each call, in [0, 2] (None: the model's default strength for the target emotion), as
    ``Transfer.apply(strength=)``; a call that gives its own strength (an HTTP request) overrides it.
    """

    model: Union[str, os.PathLike, None] = None
    device: str = "auto"
    detector: Any = None
    detect_size: Optional[int] = None
    blend: str = "residual"
    threads: Optional[int] = None
    smooth: bool = True
    align: bool = True
    exposure: bool = True
    skip_unsuitable: bool = True
    strength: Optional[float] = None

    def validate(self) -> "TransferOptions":
        """Check ``detect_size`` and ``strength`` (ValueError naming the field; the Transfer checks the others
        when it is built); returns self."""
        from fexsdk.paste import MAX_STRENGTH

        size = self.detect_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < MIN_DETECT_SIZE):
            raise ValueError(f"detect_size must be an integer >= {MIN_DETECT_SIZE} (pixels on the longer side of the copy "
                             f"the face detector sees) or None (the detector's own size), got {size!r}")
        k = self.strength
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k)
                              or not 0 <= k <= MAX_STRENGTH):
            raise ValueError(f"strength must be a number in [0, {MAX_STRENGTH:g}] or None (the model's default), got {k!r}")
        return self

    def replace(self, **changes: Any) -> "TransferOptions":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, values: Union["TransferOptions", Mapping[str, Any], None]) -> "TransferOptions":
        """A TransferOptions as given, or built from a mapping of its fields (ValueError for other keys)."""
        if isinstance(values, TransferOptions):
            return values
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.fields()))
        if unknown:
            raise ValueError(f"unknown transfer option(s) {unknown}; known: {sorted(cls.fields())}")
        return cls(**values)

    @classmethod
    def from_args(cls, args: argparse.Namespace, defaults: Optional["TransferOptions"] = None) -> "TransferOptions":
        """The options a parser got from :func:`add_transfer_arguments`; those it does not declare keep ``defaults``'."""
        base = defaults or cls()
        return base.replace(**{name: getattr(args, name) for name in cls.fields() if hasattr(args, name)})


#: ``fex demo``'s options (DemoConfig's default): YuNet sees each frame at most 480 pixels on its longer side.
DEMO_TRANSFER = TransferOptions(detect_size=480)


# -- argparse types, shared by every fex subcommand (and the ones other packages add) ----------------
def int_range(low: int, high: Optional[int] = None):
    """argparse type: an integer in [low, high]; the error names the option (argparse adds it)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            want = f">= {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be an integer {want}, got {value}")
        return value
    return parse


def float_range(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False):
    """argparse type: a finite number in the interval (brackets as given)."""
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    span = f"> {low:g}" if high == math.inf and low_open else f">= {low:g}" if high == math.inf else f"in {lo}{low:g}, {high:g}{hi}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and \
            (value < high if high_open else value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be a number {span}, got {text}")
        return value
    return parse


def detect_size(text: str) -> Optional[int]:
    """argparse type of --detect-size: 0 (None: the detector's own size) or an integer >= 32."""
    value = int_range(0)(text)
    if 0 < value < MIN_DETECT_SIZE:
        raise argparse.ArgumentTypeError(f"must be 0 (the detector's own size) or an integer >= {MIN_DETECT_SIZE}, "
                                         f"got {value}")
    return value or None


POSITIVE = int_range(1)


def _model_help() -> str:
    from fexsdk import formats

    return f"bundled model name (default, ...) or model file ({formats.suffix_list()}); default: default"


def _detector_help() -> str:
    from fexsdk.formats import ONNX_SUFFIXES

    return (f"yunet (default: the YuNet model shipped in fexsdk), haar (OpenCV's cascade), a YuNet {ONNX_SUFFIXES[0]} "
            "path or an SSD .pb path")


#: The help of each flag where a command does not give its own (add_transfer_arguments(help=)).
_HELP = {
    "device": "where the model runs: auto (a GPU when the backend has one), cpu or cuda",
    "threads": "CPU threads for the model (default: the CPUs, at most 4)",
    "blend": "residual: add the model's change to the face's luminance (default); replace: paste its output",
    "align": "do not turn tilted faces upright (by their eye landmarks) before changing them",
    "strength": "scales the change, 0-2 (0 = unchanged, 1 = the model's change; default: the model's strength for "
                "the emotion, from its card)",
    "detect_size": "YuNet sees a copy of the frame at most PX pixels on its longer side (default {default}; smaller "
                   "is faster and misses more small faces); 0: the detector's own size (960)",
}


def add_transfer_arguments(parser: argparse.ArgumentParser,
                           options: Sequence[str] = ("model", "detector", "device", "threads", "blend"),
                           help: Optional[Mapping[str, str]] = None,
                           defaults: Optional[TransferOptions] = None) -> argparse.ArgumentParser:
    """Add the flags of ``options`` (TransferOptions field names, in this order) to ``parser``: ``--model``,
    ``--detector``, ``--device``, ``--threads``, ``--blend``, ``--no-align`` (``align``), ``--strength`` and
    ``--detect-size``. Each flag's destination is its field, so :meth:`TransferOptions.from_args` reads them back.
    ``help`` replaces a flag's help text; ``defaults`` gives the defaults (TransferOptions' own when None)."""
    d = defaults or TransferOptions()
    texts = {**_HELP, **dict(help or {})}
    for name in options:
        if name == "model":
            parser.add_argument("--model", default=d.model, help=texts.get("model") or _model_help())
        elif name == "detector":
            parser.add_argument("--detector", default=d.detector, help=texts.get("detector") or _detector_help())
        elif name == "device":
            parser.add_argument("--device", default=d.device, choices=list(DEVICES), help=texts["device"])
        elif name == "threads":
            parser.add_argument("--threads", type=POSITIVE, default=d.threads, help=texts["threads"])
        elif name == "blend":
            parser.add_argument("--blend", choices=list(BLENDS), default=d.blend, help=texts["blend"])
        elif name == "align":
            parser.add_argument("--no-align", dest="align", action="store_false", default=d.align, help=texts["align"])
        elif name == "strength":
            parser.add_argument("--strength", type=float_range(0, 2), default=d.strength,  # fexsdk.paste.MAX_STRENGTH
                                help=texts["strength"])
        elif name == "detect_size":
            parser.add_argument("--detect-size", type=detect_size, default=d.detect_size, metavar="PX",
                                help=texts["detect_size"].format(default=d.detect_size or 0))
        else:
            raise ValueError(f"no command-line flag for transfer option {name!r}")
    return parser
