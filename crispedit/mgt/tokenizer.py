"""Image <-> VQ token ids with diffusers' VQModel (Meissonic/aMUSEd tokenizer).

Images enter as float tensors in [0, 1] with no normalisation, as upstream.
"""

from __future__ import annotations

import torch


class VQTokenizer:
    """Thin wrapper that fixes the shapes: (B, 3, H, W) in [0, 1] <-> (B, h, w) int64 ids."""

    def __init__(self, vq: torch.nn.Module) -> None:
        self.vq = vq.eval().requires_grad_(False)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.vq.config.block_out_channels) - 1)

    @property
    def codebook_size(self) -> int:
        return int(self.vq.config.num_vq_embeddings)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.vq.device, self.vq.dtype)
        latents = self.vq.encode(images).latents
        _, _, (_, _, indices) = self.vq.quantize(latents)
        b, _, h, w = latents.shape
        return indices.reshape(b, h, w).long()

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        b, h, w = ids.shape
        channels = self.vq.config.vq_embed_dim or self.vq.config.latent_channels
        images = self.vq.decode(ids.reshape(b, -1), force_not_quantize=True, shape=(b, h, w, channels)).sample
        return images.float().clamp(0, 1)
