"""fexsdk: change the facial expression of people in photos and video.

Importing the package needs only numpy (and OpenCV/onnxruntime for the runtime);
PyTorch is needed for training and export only.
"""

from fexsdk._version import __version__
from fexsdk.emotions import ALIASES, EMOTIONS, canonical_name, emotion_index

__all__ = ["ALIASES", "EMOTIONS", "__version__", "canonical_name", "emotion_index"]
