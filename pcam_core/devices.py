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


def limit_malloc_arenas(n: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc at `n` heaps (arenas) for this process and the processes it forks, as MALLOC_ARENA_MAX=n
    would: each of ONNX Runtime's and PyTorch's threads otherwise gets a heap of its own, and freed region-sized buffers
    stay in them (a CAMELYON-size slide analysis: peak PSS 2.10 GB with the default, 1.93 GB with 2, no slower:
    benchmarks/README.md). Threads that already have a heap keep it. False where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-8, n))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False
