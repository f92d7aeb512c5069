"""What every attention processor here shares with diffusers' own (``AttnProcessor2_0``): the way in and out.

The P2P processor and the attention store change what happens between the projections; the
preamble (spatial norm, a 4-D feature map as tokens) and the end (output projection, the
map's shape back, the residual connection, the rescale) are diffusers', written once.
"""

from __future__ import annotations

from typing import Any

import torch

Shape = tuple[int, int, int, int] | None


def attention_input(attn: Any, hidden_states: torch.Tensor, temb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, Shape]:
    """(tokens, residual, the 4-D shape to restore or None), as AttnProcessor2_0 begins."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape: Shape = None
    if hidden_states.ndim == 4:
        batch, channel, height, width = hidden_states.shape
        shape = (batch, channel, height, width)
        hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
    return hidden_states, residual, shape


def attention_output(attn: Any, out: torch.Tensor, residual: torch.Tensor, shape: Shape) -> torch.Tensor:
    """The output projection and dropout, the map's shape back, the residual connection and the rescale."""
    out = attn.to_out[0](out)
    out = attn.to_out[1](out)
    if shape is not None:
        out = out.transpose(-1, -2).reshape(*shape)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor
