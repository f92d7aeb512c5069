"""Which torch device and dtype a stage runs on, from the recipe's ``device`` and ``dtype`` strings."""

from __future__ import annotations

from typing import Any


def resolve_device(device: str = "auto") -> Any:
    """``auto`` is the first CUDA device when there is one, else the CPU; anything else as torch reads it."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: Any = None) -> Any:
    """A torch dtype by name; ``auto`` is bfloat16 on a GPU that supports it, float16 on another GPU, float32 on the CPU."""
    import torch

    if dtype == "auto":
        if device is None or torch.device(device).type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    found = getattr(torch, dtype, None)
    if not isinstance(found, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use float32, float16, bfloat16 or auto")
    return found
