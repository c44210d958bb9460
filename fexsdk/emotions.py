"""The one list of emotions fexsdk knows, in FER2013's label order.

Every other module (data loaders, models, exporters, the runtime) takes its
names, indices and label vectors from here, so the order cannot drift.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Union

import numpy as np

#: Canonical names in FER2013 label order (0=angry ... 6=neutral).
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

#: Other spellings users type, mapped to the canonical name.
ALIASES: dict[str, str] = {
    "anger": "angry",
    "mad": "angry",
    "disgusted": "disgust",
    "disgusting": "disgust",
    "afraid": "fear",
    "fearful": "fear",
    "scared": "fear",
    "joy": "happy",
    "happiness": "happy",
    "smile": "happy",
    "smiling": "happy",
    "sadness": "sad",
    "unhappy": "sad",
    "surprised": "surprise",
    "shocked": "surprise",
    "calm": "neutral",
    "none": "neutral",
}

NUM_EMOTIONS = len(EMOTIONS)

Target = Union[str, int, Mapping[str, float]]


def _valid_names_message() -> str:
    aliases = ", ".join(f"{a}->{c}" for a, c in sorted(ALIASES.items()))
    return f"valid emotions: {', '.join(EMOTIONS)} (or their index 0-{NUM_EMOTIONS - 1}); aliases: {aliases}"


def emotion_index(name: str | int) -> int:
    """Index of an emotion given by canonical name, alias (any case) or index."""
    if isinstance(name, (bool, np.bool_)):
        raise ValueError(f"emotion must be a name or an index, got {name!r}; {_valid_names_message()}")
    if isinstance(name, (int, np.integer)):
        if 0 <= int(name) < NUM_EMOTIONS:
            return int(name)
        raise ValueError(f"emotion index {int(name)} is out of range; {_valid_names_message()}")
    if not isinstance(name, str):
        raise ValueError(f"emotion must be a name or an index, got {type(name).__name__}; {_valid_names_message()}")
    if name.strip().isdigit():  # "3", as typed on a command line
        return emotion_index(int(name.strip()))
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in EMOTIONS:
        return EMOTIONS.index(key)
    raise ValueError(f"unknown emotion {name!r}; {_valid_names_message()}")


def canonical_name(name: str | int) -> str:
    """Canonical lower-case name for a name, alias or index."""
    return EMOTIONS[emotion_index(name)]


def one_hot(index: int | str, num: int = NUM_EMOTIONS) -> np.ndarray:
    """A float32 one-hot vector for one emotion."""
    vec = np.zeros(num, dtype=np.float32)
    vec[emotion_index(index)] = 1.0
    return vec


def target_vector(target: Target) -> np.ndarray:
    """Turn a target (name, alias, index or ``{name: intensity}``) into a label vector.

    A dict gives a soft label, used as given: each intensity in [0, 1], their sum
    at most 1 and not 0 (so ``{"happy": 0.5}`` is half-way between no emotion code
    and full happy). An emotion named twice (``{"happy": .5, "joy": .5}``) is refused.
    """
    _check_types(target)
    if isinstance(target, Mapping):
        vec = np.zeros(NUM_EMOTIONS, dtype=np.float32)
        named: dict[int, str] = {}
        for key, value in target.items():
            if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes)):
                raise ValueError(f"intensity for {key!r} must be a number, got {value!r}")
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"intensity for {key!r} must be a number, got {value!r}") from None
            if not np.isfinite(v) or not 0.0 <= v <= 1.0:
                raise ValueError(f"intensity for {key!r} must be a number in [0, 1], got {value!r}")
            index = emotion_index(key)
            if index in named:
                raise ValueError(f"{key!r} and {named[index]!r} name the same emotion ({EMOTIONS[index]}); give each "
                                 "emotion once")
            named[index] = key
            vec[index] = v
        total = float(vec.sum())
        if total <= 0:
            raise ValueError(f"intensities must not all be zero, got {dict(target)!r}")
        if total > 1.0 + 1e-6:
            raise ValueError(f"intensities must add up to at most 1, got {total:g} from {dict(target)!r}")
        return vec
    return one_hot(emotion_index(target))


def parse_target(text: str) -> Target:
    """A target as typed: ``fex apply -e``, the ``emotion`` field of ``fex serve``; checked.

    ``"surprise"`` or an alias -> the name as given; ``"3"`` -> 3; ``"0:happy,2:sad"`` -> a target per face by its
    left-to-right index ({0: "happy", 2: "sad"}); ``"happy=0.7,surprise=0.3"`` (or the JSON
    object ``{"happy": 0.7, "surprise": 0.3}``, as a JSON request body carries it) -> that dict. A ValueError
    says what is wrong: nothing given, a part that is not ``name=number``, an emotion given twice
    (``happy=0.2,happy=0.9``), or what :func:`target_vector` refuses.
    """
    if text is None or not str(text).strip():
        raise ValueError("no emotion: give a name (e.g. happy, or an alias such as joy), an index 0-6, "
                         "or intensities such as happy=0.7,surprise=0.3")
    text = str(text).strip()
    if ":" in text and not text.startswith("{"):  # a target per face: 0:happy,2:sad
        per_face: dict[int, Target] = {}
        for part in text.split(","):
            index, _, name = part.partition(":")
            if not index.strip().isdigit() or not name.strip():
                raise ValueError(f"bad per-face emotions {text!r}: {part.strip()!r} is not index:emotion (e.g. 0:happy,2:sad)")
            if int(index) in per_face:
                raise ValueError(f"face {int(index)} is given twice in {text!r}; give each face once")
            per_face[int(index)] = parse_target(name)
        return per_face
    if text.startswith("{"):
        pairs = _json_pairs(text)
    elif "=" in text:
        pairs = []
        for part in text.split(","):
            name, sep, value = part.partition("=")
            try:
                if not sep:
                    raise ValueError
                pairs.append((name.strip(), float(value)))
            except ValueError:
                raise ValueError(f"bad intensities {text!r}: {part.strip()!r} is not name=number") from None
    else:
        target: Target = int(text) if text.isdigit() else text
        target_vector(target)
        return target
    names = [name for name, _ in pairs]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"{name!r} is given twice in {text!r}; give each emotion once")
    out = dict(pairs)
    try:
        target_vector(out)
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith("unknown emotion") else f"bad intensities: {msg}") from None
    return out


def _json_pairs(text: str) -> list:
    import json

    try:
        pairs = json.loads(text, object_pairs_hook=lambda p: p)
    except ValueError:
        pairs = None
    if not isinstance(pairs, list):
        raise ValueError(f"bad intensities {text!r}: not a JSON object of name: number")
    return pairs


def _is_single(target) -> bool:
    return isinstance(target, (str, int, np.integer, Mapping))


def _check_types(targets) -> None:
    """Refuse what is not a target, or a list of them, with a ValueError that says what a target is."""
    what = ('a target is an emotion name or alias ("surprise"), an index 0-6, a dict of intensities '
            '({"happy": 0.7}) or a list with one of those per face')
    if targets is None or isinstance(targets, (bool, np.bool_, float, np.floating, bytes)):
        raise ValueError(f"{what}; got {type(targets).__name__} {targets!r}")
    if _is_single(targets):
        return
    if not isinstance(targets, (list, tuple, np.ndarray)):
        raise ValueError(f"{what}; got {type(targets).__name__} {targets!r}")
    for t in targets:
        if t is None or isinstance(t, (bool, np.bool_, float, np.floating, bytes)) or not _is_single(t):
            raise ValueError(f"{what}; got {type(t).__name__} {t!r} in the list")


def check_target(targets) -> None:
    """Refuse a target, or list of targets, that :func:`target_matrix` would refuse, before any work.

    Names and intensities are checked as well as types, so that a call on an image without faces
    refuses a misspelt emotion as a call with faces does, instead of returning the image unchanged."""
    _check_types(targets)
    for t in [targets] if _is_single(targets) else targets:
        target_vector(t)


def per_face_targets(targets: Target | Iterable[Target], count: int) -> list[Target]:
    """One target per face: a single target repeated, or the list itself (checked: one per face)."""
    target_matrix(targets, count)
    return [targets] * count if _is_single(targets) else list(targets)


def target_matrix(targets: Target | Iterable[Target], count: int) -> np.ndarray:
    """Label vectors for ``count`` faces: one target for all, or one per face."""
    _check_types(targets)
    if _is_single(targets):
        return np.repeat(target_vector(targets)[None], count, axis=0)
    items = list(targets)
    if len(items) != count:
        raise ValueError(f"got {len(items)} targets for {count} faces; give one target, or exactly one per face")
    if not items:
        return np.zeros((0, NUM_EMOTIONS), dtype=np.float32)
    return np.stack([target_vector(t) for t in items])
