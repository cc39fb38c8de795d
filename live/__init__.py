"""live: real-time virtual background (SAM 2 streaming or embedded selfie model)."""

# OpenCV must be imported before PyAV (aiortc imports it): the other order makes
# cv2.imshow spin at 100% CPU (PyAV issue #978), which would hang the preview.
import cv2  # noqa: F401  (import order matters, see above)
import os

# torch's OpenMP workers (libgomp) otherwise busy-wait up to 300,000 pauses after
# each parallel region while their process has a single OpenMP team: on a loaded
# 2-core box that starves the thread they wait for, and the SAM 2 encoder took
# 1.2-1.9 s instead of ~0.25 s a call (256 px, tiny model). libgomp
# reads this once, when torch loads: so here, before anything imports torch.
# An operator's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
if "GOMP_SPINCOUNT" not in os.environ:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
