"""How much memory this process holds: the kernel's counters (RSS, peak RSS) and the C heap's."""

from __future__ import annotations

import ctypes
from pathlib import Path


def status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; return that RSS in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_kib("VmRSS")


class _MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2: ten size_t counters, in this order."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


def heap_in_use() -> int | None:
    """Bytes allocated by malloc and not yet freed (glibc's mallinfo2), or None without glibc.

    Unlike the resident set size it does not hide a new allocation that reuses memory freed
    earlier in the process, so the difference around a call is what the call allocated and kept.
    """
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except AttributeError:  # not glibc (macOS, musl)
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return info.uordblks + info.hblkhd  # small blocks in the heap + large blocks mapped on their own
