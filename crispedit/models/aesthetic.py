"""The LAION aesthetic predictor v2 on normalised CLIP ViT-L/14 image embeddings."""

from __future__ import annotations

from typing import Any


def aesthetic_head(path: str, device: Any = "cpu") -> Any:
    """The LAION aesthetic predictor v2: a linear MLP on the normalised CLIP ViT-L/14 image embedding.

    Built from the shapes in the state dict (keys ``layers.{0,2,4,6,7}.{weight,bias}``: Linear
    layers with dropouts between, no activations), read from ``.safetensors`` or a ``.pth``
    state dict (``torch.load(weights_only=True)``).
    """
    import torch
    from torch import nn

    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    indices = sorted({int(k.split(".")[1]) for k in state if k.startswith("layers.") and k.endswith(".weight")})
    if not indices:
        raise ValueError(f"{path}: not an aesthetic head (no layers.N.weight keys)")
    modules: list[nn.Module] = []
    for position in range(indices[-1] + 1):
        if position in indices:
            weight = state[f"layers.{position}.weight"]
            modules.append(nn.Linear(weight.shape[1], weight.shape[0]))
        else:
            modules.append(nn.Dropout(0.0))
    head = nn.Module()
    head.layers = nn.Sequential(*modules)
    head.load_state_dict({k: v for k, v in state.items() if k.startswith("layers.")})
    head.input_dim = int(state[f"layers.{indices[0]}.weight"].shape[1])
    return head.to(device).double().eval()  # a small MLP: float64 costs nothing and makes rows batch-independent


def aesthetic_scores(head: Any, embeddings: Any) -> list[float]:
    """The head's score (about 1..10 for the real weights) per normalised embedding row."""
    import torch

    with torch.inference_mode():
        return [float(v) for v in head.layers(embeddings.to(torch.float64)).squeeze(-1).cpu()]
