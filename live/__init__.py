"""live: real-time virtual background (SAM 2 streaming or embedded selfie model)."""

# OpenCV must be imported before PyAV (aiortc imports it): the other order makes
# cv2.imshow spin at 100% CPU (PyAV issue #978), which would hang the preview.
import cv2  # noqa: F401  (import order matters, see above)
import ctypes
import os
import platform

# torch's OpenMP workers (libgomp) otherwise busy-wait up to 300,000 pauses after
# each parallel region while their process has a single OpenMP team: on a loaded
# 2-core box that starves the thread they wait for, and the SAM 2 encoder took
# 1.2-1.9 s instead of ~0.25 s a call (256 px, tiny model). libgomp
# reads this once, when torch loads: so here, before anything imports torch.
# An operator's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
if "GOMP_SPINCOUNT" not in os.environ:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Every frame allocates and frees a few megabytes of arrays (the decoded picture,
# the frame handed to the encoder). On the main thread glibc gives the memory
# freed at the top of its heap back to the kernel once more than ~2x the largest
# array is free there, and takes it again, page by page, for the next frame:
# ~1,600 page faults and 3 ms of kernel time per 1280x720 frame processed there
# (threads' own arenas keep theirs). A WebRTC session decodes and converts its
# frames on the event loop, the main thread: the pass-through server's CPU per
# 720p frame fell from 13-14 to 10-11 ms. Keeping up to 64 MB free (and serving
# arrays up to 32 MB, a 4K frame, from the heap) ends that. Operators who tune
# glibc's malloc themselves keep their settings.
_MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")
if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" and \
        not any(name in os.environ for name in _MALLOC_ENV) and \
        "glibc.malloc" not in os.environ.get("GLIBC_TUNABLES", ""):
    _M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
    _libc = ctypes.CDLL(None)
    _libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    _libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)

__version__ = "0.1.0"
