"""The C allocator's set-up for CPU training: no page-fault tax on the memory each step frees and takes again.

glibc's malloc serves every block above its mmap threshold (128 KiB, raised as large blocks are freed, at most
32 MiB on 64-bit) with fresh pages from ``mmap`` and gives them back to the kernel on ``free``. A training step
allocates and frees the same large activations every step (IS-GAN's joint batches: G's 64-channel map, D's
first convolution over real and fake images, tens to hundreds of MB each), so each step faults all their pages
in again: at ResNet-50 384x128 a stage-3 step spent a third as much time in the kernel as in user code.
:func:`keep_freed_memory` turns the mmap path off (``M_MMAP_MAX`` 0) and raises the trim threshold, so that
freed blocks stay in the heap and the next step reuses their pages. The price is that the process keeps its peak
heap (plus up to ``trim_threshold`` of free memory at its top) instead of returning it between steps.

Only glibc is tuned; elsewhere (macOS, musl, Windows) it is a no-op that says so. Nothing else of the package is
imported here.
"""
import ctypes
import platform

__all__ = ["keep_freed_memory"]

# glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top kept for the next step before it is returned (1 GiB)


def keep_freed_memory(trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's malloc to keep freed memory for reuse (module doc); True when it did, False where the C
    library is not glibc (nothing is changed there)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1
