"""Keeping a process's resident memory close to what it uses, with glibc's malloc.

Image work allocates and frees buffers of megabytes (decoded rows, HTTP bodies, encoded
images). glibc serves a request above its mmap threshold from a mapping of its own,
returned to the OS when freed; but by default that threshold grows (up to 32 MB) each
time such a block is freed, after which blocks of that size come from the heap and the
per-thread arenas and stay resident once freed. In a burst of jobs that kept tens of MB
per process. :func:`map_large_blocks` fixes the threshold, so large buffers go back to
the OS as soon as they are freed; :func:`trim` hands back what the heap keeps after a
large decode.

Both do nothing where the C library is not glibc. Imported by the image worker process:
keep it light.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc's malloc.h)
# Requests at least this large get their own mapping (glibc's initial default, but kept
# fixed: setting it turns the growing threshold off).
MMAP_THRESHOLD_BYTES = 128 * 1024


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()


def map_large_blocks() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD_BYTES`; True if it was set."""
    if _LIBC is None:
        return False
    done = bool(_LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not done:
        log.debug("mallopt(M_MMAP_THRESHOLD) was refused")
    return done


def trim() -> None:
    """Hand the memory the heap keeps free back to the OS (``malloc_trim``)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
