"""Where computations run and in which precision."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto" -> the GPU (of this rank) when there is one, else the CPU; "cuda" without a GPU is an error."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def amp_dtype_for(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """The autocast dtype: bf16 on GPUs that support it (fp16 otherwise); on the CPU only when asked
    (bf16, which exercises the same code path). None means full precision."""
    if amp is None:
        amp = device.type == "cuda"
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


MALLOC_ARENAS = 2  # glibc heaps a slide analysis keeps (`limit_malloc_arenas`)
MMAP_THRESHOLD = 32 << 20  # bytes from which glibc maps a buffer of its own, given back to the system when freed
TRIM_THRESHOLD = 64 << 20  # free bytes at the top of a heap that glibc keeps for the next buffers


def limit_malloc_arenas(n: int = MALLOC_ARENAS) -> bool:
    """Make glibc's malloc give memory back, for this process and those it forks: at most `n` heaps (arenas), as
    MALLOC_ARENA_MAX=n would (each of ONNX Runtime's and PyTorch's threads otherwise gets one), and buffers of 32 MB or
    more in maps of their own (`MMAP_THRESHOLD`, as MALLOC_MMAP_THRESHOLD_ would: fixed, where glibc's own threshold
    moves with the buffers freed, and region-sized activations could stay in the heap). A CAMELYON-size analysis with
    the bundled model peaked at 1.8-2.7 GB PSS before, 1.5 GB after (benchmarks/README.md). A 4 MB threshold, tried
    first, kept no less memory (`pcamscan` on a 30,000 x 66,000 slide: 1.44 GB PSS against 1.45-1.47 GB at 32 MB) but
    cost PyTorch's window passes time in unmapping and zeroing pages (tests/test_slide_modes.py in one process: 102
    against 88 s, a quarter more system time). Fixing the map threshold also fixes glibc's trim threshold at 128 kB:
    every free at the top of the heap gave its pages back, to be faulted in again by the next buffer; `TRIM_THRESHOLD`
    keeps 64 MB (a 12 x 10-patch slide with the bundled ensemble: 6.1 M page faults -> 3.7 M; with huge pages,
    pcam_core/__init__.py, 0.5 M, and 31.5 s -> 24.3 s). Threads that already have a heap keep it. False where the C
    library is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)  # the process's own symbols, the C library's among them (find_library runs ldconfig)
        return all(libc.mallopt(option, value) for option, value in ((-8, n), (-3, MMAP_THRESHOLD), (-1, TRIM_THRESHOLD)))
        # M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False
