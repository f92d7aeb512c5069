"""Minimal LoRA for the transformer's linear layers (no peft dependency).

Upstream optionally trains LoRA r=32, alpha=128 on the attention projections. The base
weight stays frozen; `merge_lora` folds the update back into plain nn.Linear layers so the
exported transformer has exactly the released parameter names again.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=5**0.5)
        nn.init.zeros_(self.lora_B.weight)  # starts as the identity edit: output == base output
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        delta = (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scale
        self.base.weight += delta.to(self.base.weight.dtype)
        return self.base.requires_grad_(True)


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def apply_lora(model: nn.Module, rank: int, alpha: float, targets: tuple[str, ...]) -> int:
    """Freeze the model and wrap matching nn.Linear modules; returns how many were wrapped."""
    model.requires_grad_(False)
    wrapped = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and _matches(name, targets):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, LoRALinear(module, rank, alpha or float(rank)))
            wrapped += 1
    if wrapped == 0:
        raise ValueError(f"LoRA: no nn.Linear matched targets {targets}")
    return wrapped


def merge_lora(model: nn.Module) -> nn.Module:
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.merged())
    return model
