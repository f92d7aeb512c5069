"""LoRA for the transformer's attention projections, through ``peft``.

Upstream optionally trains LoRA r=32, alpha=128 on the attention projections. The adapters
are injected with peft's own API (``inject_adapter_in_model``, as diffusers does for its
models), only they are trained, and a checkpoint of a LoRA run also holds the adapter in
peft's format (``adapter_config.json`` + ``adapter_model.safetensors``), which peft and
diffusers load as they load any LoRA. :func:`merge_lora` folds the update back into plain
``nn.Linear`` layers, so the exported transformer has exactly the released parameter names.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def lora_config(rank: int, alpha: float, targets: tuple[str, ...]):  # noqa: ANN201 - a peft LoraConfig
    """peft's config; ``alpha`` 0 means alpha = rank (a scale of 1)."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha or float(rank), target_modules=list(targets), init_lora_weights=True)


def apply_lora(model: nn.Module, rank: int, alpha: float, targets: tuple[str, ...]) -> int:
    """Freeze the model and inject LoRA into the matching linear layers; returns how many were wrapped."""
    from peft import inject_adapter_in_model

    model.requires_grad_(False)
    try:
        inject_adapter_in_model(lora_config(rank, alpha, targets), model)
    except ValueError as error:  # peft: no target module found
        raise ValueError(f"LoRA: no nn.Linear matched targets {targets} ({error})") from None
    return len(lora_layers(model))


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The modules peft wrapped, by name."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def save_adapter(model: nn.Module, folder: Path, rank: int, alpha: float, targets: tuple[str, ...]) -> None:
    """The adapter in peft's format: what ``load_adapter`` (peft's loader) and diffusers read back."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    lora_config(rank, alpha, targets).save_pretrained(str(folder))
    state = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
    save_file(state, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def load_adapter(model: nn.Module, folder: Path) -> nn.Module:
    """Inject and load an adapter saved by :func:`save_adapter` (or any peft LoRA for these layers), with peft's loader."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    inject_adapter_in_model(LoraConfig.from_pretrained(str(folder)), model)
    result = set_peft_model_state_dict(model, load_file(str(folder / ADAPTER_WEIGHTS)))
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise ValueError(f"{folder}: adapter weights for layers this model lacks: {missing[:3]}")
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer and put the plain layer back (the released names again)."""
    for name, module in lora_layers(model).items():
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer().requires_grad_(True))
    return model
