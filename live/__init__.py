"""live: real-time virtual background (SAM 2 streaming or embedded selfie model)."""

# OpenCV must be imported before PyAV (aiortc imports it): the other order makes
# cv2.imshow spin at 100% CPU (PyAV issue #978), which would hang the preview.
import cv2  # noqa: F401  (import order matters, see above)

__version__ = "0.1.0"
