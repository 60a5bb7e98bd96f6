"""Peak training memory of one trial, measured the same way for every method.

On CUDA: the peak of allocated tensors (`torch.cuda.max_memory_allocated`) since the loop began
(the counter is reset there). On CPU: the process's peak resident set size since the loop began.
Linux keeps that peak (VmHWM in /proc/self/status, what `getrusage`'s ru_maxrss reports) for the
process's whole life unless it is reset — read as a trial's peak, a worker that runs many trials
would record the largest trial so far for every later one (a small LoRA after a full fine-tune
would "need" the full fine-tune's memory). So the loop resets it when it starts (writing 5 to
/proc/self/clear_refs, Linux ≥ 4.0, proc(5)) and reads VmHWM at the end. Where the
reset is not possible, the figure is the process's lifetime peak and says so (`kind`).

Resident is not the same as in use: memory a finished trial freed stays resident in the C
allocator's heap (glibc keeps freed chunks below its dynamic mmap threshold, up to 32 MiB, which
covers most activation tensors), and the reset sets the peak to what is resident. Measured on
MiniLM (six short trials in one process): the same LoRA design recorded 1,258, 1,695 and
1,404 MiB, and a parallel adapter 1 MiB of growth over its start. So on CPU `start` first frees
what it can — a garbage collection, then glibc's `malloc_trim(0)` (malloc_trim(3): returns every
free page of the heap to the system) — and then resets the peak; the same six trials then start
at 721–747 MiB and the LoRA design records 1,245, 1,259 and 1,259 MiB. Without glibc (musl,
macOS) the trim is skipped.

The peak includes everything live when the loop began: on CUDA the model's weights; on CPU also
the interpreter, torch, the kept data and whatever this worker keeps resident (a backbone per
seed it has run: ≈ 90 MB for MiniLM), so on CPU the peak of one design depends on the worker's
history. `in_use` at the start is therefore recorded too, and the `memory` frontier objective is
the growth over it (`peak − in use at the start`: activations, gradients, optimizer state and the
batch — what training this variant adds; on CUDA it orders and separates designs exactly as the
peak does, the frozen weights being the same for every variant).

Standard library only, so the benchmarks' second virtual environment (transformers 4, no
unipetl installed) imports it from the source tree (`benchmarks/common.py`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import resource
import sys
from typing import Any

CUDA = "cuda_max_allocated"
CPU_RESET = "peak_rss_since_reset"
CPU_LIFETIME = "max_rss_of_process"  # the reset failed (not Linux, or /proc not writable): a lifetime peak


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: writing 5 to /proc/self/clear_refs resets VmHWM);
    True when the reset worked."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def max_rss_bytes() -> int:
    """Peak resident set size of this process since it started (ru_maxrss: Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def peak_rss_bytes() -> int:
    """Peak RSS since the last `reset_peak_rss` (VmHWM from /proc/self/status), else `max_rss_bytes`. Bytes."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return max_rss_bytes()


@functools.cache
def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None (another C library)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c")), "malloc_trim", None)
    except OSError:
        return None


def release_free_memory() -> bool:
    """Collect garbage and hand the C heap's free pages back to the system (glibc malloc_trim(0)),
    so that what is resident is what is in use; True when the trim ran."""
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def start(device: Any) -> str:
    """Begin a peak-memory window on `device` (a torch.device); returns its kind (CUDA, CPU_RESET or CPU_LIFETIME)."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)
        return CUDA
    release_free_memory()  # else the peak starts at whatever earlier trials freed but the heap kept
    return CPU_RESET if reset_peak_rss() else CPU_LIFETIME


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc/self/statm), 0 where unavailable. Bytes."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def in_use(device: Any) -> int:
    """Memory in use now, in bytes: allocated CUDA tensors on `device`, else this process's RSS (`rss_bytes`)."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return int(torch.cuda.memory_allocated(device))
    return rss_bytes()


def peak(device: Any) -> int:
    """Peak memory in bytes since `start(device)` (see the module docstring for what it counts)."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss_bytes()


__all__ = ["CPU_LIFETIME", "CPU_RESET", "CUDA", "in_use", "max_rss_bytes", "peak", "peak_rss_bytes", "release_free_memory", "reset_peak_rss", "rss_bytes", "start"]
