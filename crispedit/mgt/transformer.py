"""The EditMGT transformer: Meissonic's MMDiT with the source image as a reference stream.

Parameter names follow the released Meissonic/EditMGT `Transformer2DModel`
(`transformer_blocks.N.*`, `single_transformer_blocks.N.*`, `embed.*`, `mlm_layer.*`,
`cond_embed.*`, `connector.projector.*`, ...), so their checkpoints load with strict=True.

The reference stream (the source image's VQ tokens) goes through the same embedding and
the same block weights as the target, at timestep 0, with the target's RoPE positions, and
is joined with the other tokens only inside attention (see attention.py). The model adds
no parameter for it, so a Meissonic text-to-image checkpoint is a valid initialisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import (
    CombinedTimestepTextProjEmbeddings,
    TimestepEmbedding,
    get_timestep_embedding,
)
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import (
    AdaLayerNormZero,
    AdaLayerNormZeroSingle,
    RMSNorm,
)
from diffusers.models.resnet import Downsample2D, Upsample2D
from diffusers.models.transformers.transformer_flux import FluxPosEmbed

from .attention import AttentionCapture, EditMGTAttnProcessor, Rotary

if TYPE_CHECKING:
    from .config import TransformerConfig

_EPS = 1e-6


class TransformerBlock(nn.Module):
    """Double (MMDiT) block: separate weights for text and image streams, joint attention."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int) -> None:
        super().__init__()
        self.norm1 = AdaLayerNormZero(dim)
        self.norm1_context = AdaLayerNormZero(dim)
        self.attn = Attention(
            query_dim=dim,
            cross_attention_dim=None,
            added_kv_proj_dim=dim,
            dim_head=attention_head_dim,
            heads=num_attention_heads,
            out_dim=dim,
            context_pre_only=False,
            bias=True,
            qk_norm="rms_norm",
            eps=_EPS,
        )
        self.processor = EditMGTAttnProcessor()
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=_EPS)
        self.ff = FeedForward(dim=dim, dim_out=dim, activation_fn="gelu-approximate")
        self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=_EPS)
        self.ff_context = FeedForward(dim=dim, dim_out=dim, activation_fn="gelu-approximate")

    def _image_ff(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        h = self.norm2(x) * (1 + scale[:, None]) + shift[:, None]
        return x + gate.unsqueeze(1) * self.ff(h)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary: Rotary,
        reference_hidden_states: torch.Tensor | None = None,
        reference_temb: torch.Tensor | None = None,
        gamma: float = 1.0,
        capture: AttentionCapture | None = None,
        block_index: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        norm_x, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden_states, emb=temb)
        norm_c, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(encoder_hidden_states, emb=temb)
        norm_r = None
        if reference_hidden_states is not None:
            norm_r, r_gate_msa, r_shift_mlp, r_scale_mlp, r_gate_mlp = self.norm1(reference_hidden_states, emb=reference_temb)

        attn_x, attn_c, attn_r = self.processor(
            self.attn,
            norm_x,
            rotary,
            encoder_hidden_states=norm_c,
            reference_hidden_states=norm_r,
            gamma=gamma,
            capture=capture,
            block_index=block_index,
            n_text=encoder_hidden_states.shape[1],
        )

        hidden_states = self._image_ff(hidden_states + gate_msa.unsqueeze(1) * attn_x, shift_mlp, scale_mlp, gate_mlp)
        if attn_r is not None:
            reference_hidden_states = self._image_ff(
                reference_hidden_states + r_gate_msa.unsqueeze(1) * attn_r, r_shift_mlp, r_scale_mlp, r_gate_mlp
            )

        encoder_hidden_states = encoder_hidden_states + c_gate_msa.unsqueeze(1) * attn_c
        norm_c = self.norm2_context(encoder_hidden_states) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
        encoder_hidden_states = encoder_hidden_states + c_gate_mlp.unsqueeze(1) * self.ff_context(norm_c)
        if encoder_hidden_states.dtype == torch.float16:
            encoder_hidden_states = encoder_hidden_states.clip(-65504, 65504)
        return encoder_hidden_states, hidden_states, reference_hidden_states


class SingleTransformerBlock(nn.Module):
    """Single (DiT) block over the joined [text; target] sequence, parallel attention + MLP."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.mlp_hidden_dim = int(dim * mlp_ratio)
        self.norm = AdaLayerNormZeroSingle(dim)
        self.proj_mlp = nn.Linear(dim, self.mlp_hidden_dim)
        self.act_mlp = nn.GELU(approximate="tanh")
        self.proj_out = nn.Linear(dim + self.mlp_hidden_dim, dim)
        self.attn = Attention(
            query_dim=dim,
            cross_attention_dim=None,
            dim_head=attention_head_dim,
            heads=num_attention_heads,
            out_dim=dim,
            bias=True,
            qk_norm="rms_norm",
            eps=_EPS,
            pre_only=True,
        )
        self.processor = EditMGTAttnProcessor()

    def _finish(self, residual: torch.Tensor, attn_out: torch.Tensor, mlp: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        out = residual + gate.unsqueeze(1) * self.proj_out(torch.cat([attn_out, mlp], dim=2))
        if out.dtype == torch.float16:
            out = out.clip(-65504, 65504)
        return out

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary: Rotary,
        reference_hidden_states: torch.Tensor | None = None,
        reference_temb: torch.Tensor | None = None,
        gamma: float = 1.0,
        capture: AttentionCapture | None = None,
        block_index: int = -1,
        n_text: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        norm_x, gate = self.norm(hidden_states, emb=temb)
        mlp_x = self.act_mlp(self.proj_mlp(norm_x))
        norm_r = None
        if reference_hidden_states is not None:
            norm_r, r_gate = self.norm(reference_hidden_states, emb=reference_temb)
            mlp_r = self.act_mlp(self.proj_mlp(norm_r))
        attn_x, _, attn_r = self.processor(
            self.attn,
            norm_x,
            rotary,
            reference_hidden_states=norm_r,
            gamma=gamma,
            capture=capture,
            block_index=block_index,
            n_text=n_text,
        )
        hidden_states = self._finish(hidden_states, attn_x, mlp_x, gate)
        if attn_r is not None:
            reference_hidden_states = self._finish(reference_hidden_states, attn_r, mlp_r, r_gate)
        return hidden_states, reference_hidden_states


class UVit2DConvEmbed(nn.Module):
    """Token ids -> embedding -> RMSNorm -> 1x1 conv (Meissonic's `embed`)."""

    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, dim)
        self.layer_norm = RMSNorm(dim, _EPS, True)
        self.conv = nn.Conv2d(dim, dim, kernel_size=1, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(self.embeddings(input_ids))
        return self.conv(x.permute(0, 3, 1, 2))


class ConvMlmLayer(nn.Module):
    """Hidden map -> codebook logits (Meissonic's `mlm_layer`)."""

    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=1, bias=False)
        self.layer_norm = RMSNorm(dim, _EPS, True)
        self.conv2 = nn.Conv2d(dim, codebook_size, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(self.conv1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.conv2(x)


class Simple_UVitBlock(nn.Module):  # noqa: N801 - name kept for checkpoint readers that inspect classes
    """Optional 2x down (conv) or up (transposed conv) with RMSNorm, as in Meissonic."""

    def __init__(self, dim: int, downsample: bool, upsample: bool) -> None:
        super().__init__()
        self.downsample = (
            Downsample2D(dim, use_conv=True, padding=0, name="Conv2d_0", kernel_size=2, norm_type="rms_norm",
                         eps=_EPS, elementwise_affine=True, bias=False)
            if downsample else None
        )
        self.upsample = (
            Upsample2D(dim, use_conv_transpose=True, kernel_size=2, padding=0, name="conv", norm_type="rms_norm",
                       eps=_EPS, elementwise_affine=True, bias=False, interpolate=False)
            if upsample else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class LinearProjector(nn.Module):
    """LLM hidden size -> model width (EditMGT's `connector`, type 'linear')."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.projector = nn.Linear(in_dim, out_dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(x)


class TaskEmbedding(nn.Module):
    """Emu Edit's task vectors: one learned vector per task category, added to the timestep +
    pooled-text embedding (temb) that drives every adaptive norm, in the target and reference streams.

    Rows start at zero, so a model starting from released weights behaves exactly as before
    until training moves them. Task id -1 means "no task" and adds nothing.

    Task inversion (`begin_inversion`) freezes every row and makes the LAST row its own
    trainable parameter, so an optimizer given only that parameter cannot touch anything else.
    The state dict always holds one `weight` with every row, so an inverted checkpoint loads
    like any other.
    """

    def __init__(self, num_tasks: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_tasks, dim))
        self.inverted: nn.Parameter | None = None

    @property
    def num_tasks(self) -> int:
        return self.weight.shape[0] + (0 if self.inverted is None else 1)

    def begin_inversion(self) -> nn.Parameter:
        rows = self.weight.detach()
        self.weight = nn.Parameter(rows[:-1].clone(), requires_grad=False)
        self.inverted = nn.Parameter(rows[-1:].clone())
        return self.inverted

    def table(self) -> torch.Tensor:
        return self.weight if self.inverted is None else torch.cat([self.weight, self.inverted])

    def forward(self, task_ids: torch.Tensor) -> torch.Tensor:
        vectors = self.table()[task_ids.clamp(min=0)]
        return vectors * (task_ids >= 0).unsqueeze(-1).to(vectors.dtype)

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001 - torch's hook signature
        table = self.table()
        destination[prefix + "weight"] = table if keep_vars else table.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,  # noqa: ANN001
                              error_msgs):
        key = prefix + "weight"
        unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k != key and "." not in k[len(prefix):])
        if key not in state_dict:
            missing_keys.append(key)
            return
        value = state_dict[key]
        if tuple(value.shape) != (self.num_tasks, self.weight.shape[1]):
            error_msgs.append(f"size mismatch for {key}: checkpoint {tuple(value.shape)}, "
                              f"model {(self.num_tasks, self.weight.shape[1])}")
            return
        with torch.no_grad():
            n = self.weight.shape[0]
            self.weight.copy_(value[:n])
            if self.inverted is not None:
                self.inverted.copy_(value[n:])


def image_position_ids(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(H*W, 3) ids (0, row, col): shared by target and reference so they align under RoPE."""
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=1).float()


class EditMGTTransformer(ModelMixin, ConfigMixin):
    """Masked generative transformer for editing: predicts target VQ tokens from a masked
    target, a reference (source) token map and text conditioning."""

    _no_split_modules = ["TransformerBlock", "SingleTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        num_layers: int = 14,
        num_single_layers: int = 28,
        attention_head_dim: int = 128,
        num_attention_heads: int = 8,
        joint_attention_dim: int = 2304,
        pooled_projection_dim: int = 1024,
        axes_dims_rope: tuple[int, int, int] = (16, 56, 56),
        vocab_size: int = 8256,
        codebook_size: int = 8192,
        downsample: bool = True,
        upsample: bool = True,
        connector_type: str = "linear",
        micro_cond_encode_dim: int = 256,
        num_micro_conds: int = 5,
        num_tasks: int = 0,
    ) -> None:
        super().__init__()
        dim = num_attention_heads * attention_head_dim
        if sum(axes_dims_rope) != attention_head_dim:
            raise ValueError(f"axes_dims_rope {axes_dims_rope} must sum to attention_head_dim {attention_head_dim}")
        self.inner_dim = dim
        self.pos_embed = FluxPosEmbed(theta=10000, axes_dim=list(axes_dims_rope))
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(embedding_dim=dim, pooled_projection_dim=dim)
        if connector_type == "linear":
            self.connector = LinearProjector(joint_attention_dim, dim)
            self.context_embedder = nn.Linear(dim, dim)
        elif connector_type == "none":
            self.connector = None
            self.context_embedder = nn.Linear(joint_attention_dim, dim)
        else:
            raise ValueError(f"connector_type must be 'linear' or 'none', got {connector_type!r}")
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(dim, num_attention_heads, attention_head_dim) for _ in range(num_layers)]
        )
        self.single_transformer_blocks = nn.ModuleList(
            [SingleTransformerBlock(dim, num_attention_heads, attention_head_dim) for _ in range(num_single_layers)]
        )
        self.embed = UVit2DConvEmbed(dim, vocab_size)
        self.mlm_layer = ConvMlmLayer(dim, codebook_size)
        self.cond_embed = TimestepEmbedding(
            micro_cond_encode_dim * num_micro_conds + pooled_projection_dim, dim, sample_proj_bias=False
        )
        self.encoder_proj_layer_norm = RMSNorm(dim, _EPS, True)
        self.project_to_hidden_norm = RMSNorm(dim, _EPS, True)
        self.project_to_hidden = nn.Linear(dim, dim, bias=False)
        self.project_from_hidden_norm = RMSNorm(dim, _EPS, True)
        self.project_from_hidden = nn.Linear(dim, dim, bias=False)
        self.down_block = Simple_UVitBlock(dim, downsample, False)
        self.up_block = Simple_UVitBlock(dim, False, upsample)
        # Emu Edit task vectors (optional, not in the released layout).
        self.task_embed = TaskEmbedding(num_tasks, dim) if num_tasks > 0 else None
        self.gradient_checkpointing = False

    @property
    def num_blocks(self) -> int:
        return len(self.transformer_blocks) + len(self.single_transformer_blocks)

    def _image_tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.down_block(self.embed(ids))
        b, c, h, w = x.shape
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        return self.project_to_hidden(self.project_to_hidden_norm(x)), h, w

    def forward(
        self,
        input_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        micro_conds: torch.Tensor,
        timestep: torch.Tensor,
        reference_ids: torch.Tensor | None = None,
        reference_strength: float = 1.0,
        capture: AttentionCapture | None = None,
        task_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, codebook_size, H, W) for the target token map `input_ids` (B, H, W).

        `timestep` is multiplied by 1000 here, as upstream (see docs/trainer.md for what the
        callers feed: the mask ratio, or upstream's conventions); the reference stream always
        uses timestep 0. `reference_strength` is gamma (1 = no bias). `task_ids` (B,) selects
        task vectors (-1 = none) when the model has them.
        """
        cfg = self.config
        if self.connector is not None:
            encoder_hidden_states = self.connector(encoder_hidden_states.to(self.dtype))
        micro = get_timestep_embedding(micro_conds.flatten(), cfg.micro_cond_encode_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        micro = micro.reshape(input_ids.shape[0], -1)
        pooled = torch.cat([pooled_projections, micro.to(pooled_projections.dtype)], dim=1).to(self.dtype)
        pooled = self.cond_embed(pooled)

        text = self.encoder_proj_layer_norm(self.context_embedder(encoder_hidden_states.to(self.dtype)))
        target, h, w = self._image_tokens(input_ids)
        timestep = timestep.to(target.dtype) * 1000
        temb = self.time_text_embed(timestep, pooled)

        reference = reference_temb = None
        if reference_ids is not None:
            reference, _, _ = self._image_tokens(reference_ids)
            reference_temb = self.time_text_embed(torch.zeros_like(timestep), pooled)
        if self.task_embed is not None and task_ids is not None:
            task = self.task_embed(task_ids.to(temb.device)).to(temb.dtype)
            temb = temb + task
            reference_temb = None if reference_temb is None else reference_temb + task

        n_text = text.shape[1]
        img_ids = image_position_ids(h, w, target.device)
        txt_ids = torch.zeros(n_text, 3, device=target.device)
        ids = torch.cat([txt_ids, img_ids] + ([img_ids] if reference is not None else []), dim=0)
        rotary = self.pos_embed(ids)

        for i, block in enumerate(self.transformer_blocks):
            args = (target, text, temb, rotary, reference, reference_temb, reference_strength, capture, i)
            if self.training and self.gradient_checkpointing:
                text, target, reference = torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
            else:
                text, target, reference = block(*args)

        joined = torch.cat([text, target], dim=1)
        offset = len(self.transformer_blocks)
        for i, block in enumerate(self.single_transformer_blocks):
            args = (joined, temb, rotary, reference, reference_temb, reference_strength, capture, offset + i, n_text)
            if self.training and self.gradient_checkpointing:
                joined, reference = torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
            else:
                joined, reference = block(*args)

        x = self.project_from_hidden(self.project_from_hidden_norm(joined[:, n_text:]))
        x = x.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        return self.mlm_layer(self.up_block(x))


def build_transformer(cfg: TransformerConfig, num_tasks: int = 0) -> EditMGTTransformer:
    """Random-init transformer from a TransformerConfig (plus `num_tasks` task vectors)."""
    kwargs = cfg.model_dump()
    kwargs["axes_dims_rope"] = tuple(kwargs["axes_dims_rope"])
    return EditMGTTransformer(**kwargs, num_tasks=num_tasks)
