"""fexsdk: change the facial expression of people in photos and video.

Importing the package needs only numpy (and OpenCV/onnxruntime for the runtime);
PyTorch is needed for training and export only.
"""

from fexsdk._version import __version__
from fexsdk.emotions import ALIASES, EMOTIONS, canonical_name, emotion_index

__all__ = ["ALIASES", "EMOTIONS", "FaceRecord", "Transfer", "TransferOptions", "TransferResult", "__version__", "canonical_name",
           "emotion_index"]


def __getattr__(name: str):
    # Transfer pulls in OpenCV and onnxruntime; load it on first use so `import fexsdk` stays light.
    if name in ("FaceRecord", "Transfer", "TransferResult"):
        from fexsdk import transfer

        return getattr(transfer, name)
    if name == "TransferOptions":
        from fexsdk.options import TransferOptions

        return TransferOptions
    raise AttributeError(f"module 'fexsdk' has no attribute {name!r}")
