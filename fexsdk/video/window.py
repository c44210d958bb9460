"""The demo's window (OpenCV's, where this OpenCV and this machine can show one) and its overlay text."""

from __future__ import annotations

import os
import re
import sys
from typing import Sequence

import cv2
import numpy as np

from fexsdk.video.tracking import Box


#: Keys understood by the demo window (also printed when it opens).
KEY_HELP = "keys: 1-7 emotion, n/p next/previous, s save frame, space original/transfer, q/Esc quit"
_GUI_INSTALL = 'pip uninstall opencv-python-headless && pip install "opencv-python<5"'


class GuiUnavailable(RuntimeError):
    """A window was asked for but this OpenCV (or this machine) cannot show one."""



def gui_support() -> tuple[bool, str]:
    """(True, "") when OpenCV can open a window here, else (False, why not)."""
    if not callable(getattr(cv2, "imshow", None)) or not callable(getattr(cv2, "namedWindow", None)):
        return False, f"this OpenCV ({cv2.__version__}) has no cv2.imshow"
    try:
        info = cv2.getBuildInformation()
    except Exception:  # pragma: no cover
        info = ""
    m = re.search(r"^\s*GUI:\s*(\S+)", info, re.MULTILINE)
    if m and m.group(1).upper() == "NONE":
        return False, f"this OpenCV ({cv2.__version__}) was built without GUI support (opencv-python-headless)"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "there is no display to show it on (DISPLAY is not set)"
    return True, ""


def _gui_message(reason: str) -> str:
    msg = (f"fex demo needs a window to show the video, but {reason}. Run without a window with "
           "--output out.mp4 or --headless")
    if "display" in reason:
        return msg + "."
    return msg + f", or install OpenCV's GUI build: {_GUI_INSTALL}"


class CvWindow:
    """An OpenCV window: ``show(frame) -> key`` (-1 for none), ``closed()``, ``close()``."""

    def __init__(self, name: str = "fex demo") -> None:
        ok, reason = gui_support()
        if not ok:
            raise GuiUnavailable(_gui_message(reason))
        self.name = name
        try:
            cv2.namedWindow(name, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise GuiUnavailable(_gui_message(f"OpenCV could not open a window ({str(exc).strip()})")) from None
        self._shown = False

    def show(self, frame: np.ndarray) -> int:
        cv2.imshow(self.name, frame)
        self._shown = True
        key = cv2.waitKey(1)
        return -1 if key < 0 else key & 0xFF

    def closed(self) -> bool:
        if not self._shown:
            return False
        try:
            return cv2.getWindowProperty(self.name, cv2.WND_PROP_VISIBLE) < 1
        except cv2.error:
            return True

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.name)
            cv2.waitKey(1)
        except cv2.error:
            pass


def _text_style(width: int, scales: tuple[float, float, float]) -> tuple[float, int]:
    """Font scale (from ``scales`` for frames up to 480, up to 960 and wider) and stroke for a frame ``width`` wide."""
    scale = scales[0] if width <= 480 else scales[1] if width <= 960 else scales[2]
    return scale, 1 if width <= 960 else 2


def _darken(region: np.ndarray) -> None:
    """Darken an image region to 40% in place: the band text is drawn on."""
    region[:] = (region.astype(np.uint16) * 2 // 5).astype(np.uint8)


def draw_overlay(image: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """Draw text lines at the top left of ``image`` (in place) on a dark translucent band; returns it."""
    if not lines:
        return image
    h, w = image.shape[:2]
    scale, thick = _text_style(w, (0.42, 0.55, 0.75))
    font = cv2.FONT_HERSHEY_SIMPLEX
    sizes = [cv2.getTextSize(t, font, scale, thick)[0] for t in lines]
    line_h = max(s[1] for s in sizes) + int(8 * scale / 0.42)
    bw = min(w, max(s[0] for s in sizes) + 12)
    bh = min(h, line_h * len(lines) + 8)
    _darken(image[:bh, :bw])
    color = (255, 255, 255) if image.ndim == 3 else 255
    for i, text in enumerate(lines):
        cv2.putText(image, text, (6, 4 + line_h * (i + 1) - 4), font, scale, color, thick, cv2.LINE_AA)
    return image


def draw_track_ids(image: np.ndarray, labels: Sequence[tuple[Box, str]]) -> np.ndarray:
    """Draw each track's label (its id, and its emotion where it changes) at its box's top-left corner, in place;
    returns it. The ids are what ``fex demo --faces`` and ``-e ID:emotion`` choose tracks by."""
    if not labels:
        return image
    h, w = image.shape[:2]
    scale, thick = _text_style(w, (0.4, 0.5, 0.7))
    font = cv2.FONT_HERSHEY_SIMPLEX
    color = (255, 255, 255) if image.ndim == 3 else 255
    for (x, y, _, _), text in labels:
        (tw, th), base = cv2.getTextSize(text, font, scale, thick)
        bw, bh = tw + 6, th + base + 4
        # Just above the box where there is room, else just inside it; always within the frame.
        x0 = int(min(max(round(x), 0), max(w - bw, 0)))
        y0 = int(round(y)) - bh
        y0 = min(max(y0 if y0 >= 0 else int(round(y)), 0), max(h - bh, 0))
        _darken(image[y0 : y0 + bh, x0 : x0 + bw])
        cv2.putText(image, text, (x0 + 3, y0 + 2 + th), font, scale, color, thick, cv2.LINE_AA)
    return image
