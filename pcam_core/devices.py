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
