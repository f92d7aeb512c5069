"""DiT4Edit's own denoising loop on PixArtTransformer2DModel: invert the source, regenerate both branches.

diffusers' PixArt pipelines cannot do this: they have no inversion and pass no attention
arguments to the transformer. The loop, for one (source image, source caption, target
caption) pair:

1. encode the image with the VAE (the posterior mean: no sampling, so no seed);
2. encode the captions with T5, once per prompt (cached; the encoder can sit on the CPU or
   be freed between batches, since nothing else needs it);
3. invert the source latents with the source caption (solver.invert), keeping the whole
   trajectory;
4. regenerate the source and target branches together from the inverted noise, in one
   model call per step, with the attention processors injecting source into target;
5. when the sample has a mask, after every step blend the target's latents outside the mask
   back to the inverted source trajectory at that step (so outside a hard mask the target
   follows the source's trajectory exactly and ends on the encoded source);
6. decode the target.

The source branch is regenerated (its keys and values feed the target) with the inversion's
guidance by default, so its final latents measure how exact the inversion was.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from crispedit.dit4edit.attention import (
    AttentionController,
    CallLayout,
    CrossMode,
    EditControl,
    install,
    prompt_tokens,
    refine_mapper,
    replace_mapper,
)
from crispedit.dit4edit.models import PixArtModels, TextModels
from crispedit.dit4edit.solver import Inversion, Sampler, Schedule, invert, rms

Offload = Literal["keep", "cpu", "free"]


class PromptMismatch(ValueError):
    """The captions cannot be controlled as asked (replace needs the same number of words)."""


@dataclass(frozen=True)
class EditSettings:
    """Every knob of one edit; the stage fills it from the recipe (docs/dit4edit.md says where defaults come from)."""

    steps: int = 30
    inversion_guidance: float = 1.0
    guidance: float = 4.5
    source_guidance: float | None = None  # None: the inversion's, so the source branch retraces it
    self_switch: float = 0.4  # fraction of steps with full source Q, K, V (S = round(fraction * steps))
    self_blocks: tuple[int, ...] | None = None  # None: the deeper half
    cross: Literal["auto", "replace", "refine", "none"] = "auto"
    cross_steps: float = 0.8
    merge_ratio: float = 0.0
    max_corrections: int = 3
    tolerance: float = 2.5e-4
    relaxation: float = 1.0
    passes: int = 1
    mask_blend: bool = True


@dataclass
class EditResult:
    target: np.ndarray  # HxWx3 uint8
    target_latents: torch.Tensor
    source_latents: torch.Tensor  # the regenerated source branch
    encoded: torch.Tensor  # the VAE's latents of the source image
    inversion: Inversion
    reconstruction_error: float  # ||regenerated source - encoded|| / ||encoded||
    cross: CrossMode | None
    self_blocks: tuple[int, ...]
    self_switch: int
    blended: bool
    trajectory: list[torch.Tensor] | None = None  # target latents after every step, when asked for


class PromptEncoder:
    """T5 run once per prompt; embeddings cached; the encoder kept, parked on the CPU, or freed after each use."""

    def __init__(self, load: Callable[[], TextModels], device: torch.device, offload: Offload = "cpu", cache_size: int = 256) -> None:
        self._load = load
        self.device = device
        self.offload = offload
        self.text = load()
        self.tokenizer = self.text.tokenizer
        self.name = self.text.name
        self.cache: OrderedDict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.cache_size = cache_size
        self.calls = 0
        self._park()

    def encode(self, prompts: Sequence[str], max_length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(embeddings (1, L, C), mask (1, L)) per prompt. Each prompt is encoded alone, so a prompt's
        embedding does not depend on which others share its batch."""
        missing = [p for p in dict.fromkeys(prompts) if (p, max_length) not in self.cache]
        if missing:
            encoder = self._encoder()
            for prompt in missing:
                tokens = self.tokenizer(
                    prompt, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True, return_tensors="pt",
                )
                ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
                with torch.no_grad():
                    embeds = encoder(ids, attention_mask=mask)[0]
                self.calls += 1
                self.cache[(prompt, max_length)] = (embeds, mask)
                while len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
            self._park()
        for prompt in prompts:
            self.cache.move_to_end((prompt, max_length))
        return [self.cache[(p, max_length)] for p in prompts]

    def _encoder(self) -> Any:
        if self.text.encoder is None:  # freed after the last batch
            self.text = self._load()
        return self.text.encoder.to(self.device)

    def _park(self) -> None:
        if self.offload == "cpu":
            self.text.encoder.to("cpu")
        elif self.offload == "free":
            self.text.encoder = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        else:
            self.text.encoder.to(self.device)


class DiT4EditPipeline:
    """One PixArt checkpoint with its VAE, the shared prompt encoder, and the attention processors installed."""

    def __init__(self, models: PixArtModels, prompts: PromptEncoder, max_length: int, device: torch.device) -> None:
        self.models = models
        self.transformer = models.transformer.to(device)
        self.vae = models.vae.to(device)
        if self.vae.dtype == torch.float16 and self.vae.config.get("force_upcast", False):
            self.vae.to(torch.float32)  # the SDXL VAE (PixArt-Σ) overflows in float16, as diffusers knows
        self.prompts = prompts
        self.max_length = max_length
        self.device = device
        self.controller = AttentionController()
        install(self.transformer, self.controller)
        self.patch = int(self.transformer.config.patch_size)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_channels = int(self.vae.config.latent_channels)
        self.model_calls = 0

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this (VAE downsampling x patch size): 16 for PixArt."""
        return self.vae_scale * self.patch

    @property
    def num_blocks(self) -> int:
        return len(self.transformer.transformer_blocks)

    # -- images <-> latents ---------------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0
        latents = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist.mean
        shift = self.vae.config.get("shift_factor") or 0.0
        return ((latents.float() - shift) * self.vae.config.scaling_factor).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        shift = self.vae.config.get("shift_factor") or 0.0
        z = latents / self.vae.config.scaling_factor + shift
        pixels = self.vae.decode(z.to(self.vae.dtype)).sample.float().clamp(-1, 1)
        return ((pixels[0].permute(1, 2, 0) + 1.0) * 127.5).round().to(torch.uint8).cpu().numpy()

    # -- the model ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _eps(self, latents: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor, timestep: int, size: tuple[int, int]) -> torch.Tensor:
        """The noise estimate for every row (learned-sigma channels dropped), float32."""
        batch = latents.shape[0]
        dtype = self.transformer.dtype
        added: dict[str, Any] = {"resolution": None, "aspect_ratio": None}
        if self.transformer.use_additional_conditions:  # PixArt-α 1024-MS conditions on size and aspect
            height, width = size
            added = {
                "resolution": torch.tensor([[height, width]], device=self.device, dtype=dtype).repeat(batch, 1),
                "aspect_ratio": torch.tensor([[height / width]], device=self.device, dtype=dtype).repeat(batch, 1),
            }
        out = self.transformer(
            latents.to(dtype), encoder_hidden_states=embeds.to(dtype), encoder_attention_mask=mask,
            timestep=torch.full((batch,), timestep, device=self.device, dtype=torch.long), added_cond_kwargs=added, return_dict=False,
        )[0]
        self.model_calls += 1
        if out.shape[1] == 2 * self.latent_channels:  # learned sigma: keep the noise half, as diffusers' pipeline does
            out = out[:, : self.latent_channels]
        return out.float()

    @staticmethod
    def _guide(eps: torch.Tensor, rows: int, scale: float) -> torch.Tensor:
        """Classifier-free guidance over one branch's rows ([uncond, cond] or [cond])."""
        if rows == 1 or scale == 1.0:
            return eps[rows - 1 : rows]  # the conditional row itself, bit for bit
        return eps[0:1] + scale * (eps[1:2] - eps[0:1])

    # -- the edit -------------------------------------------------------------------------------------
    def control(self, source_caption: str, target_caption: str, settings: EditSettings, seed: int) -> EditControl:
        """The attention control for one pair (raises PromptMismatch when replace cannot apply)."""
        n = settings.steps
        blocks = settings.self_blocks if settings.self_blocks is not None else tuple(range(self.num_blocks // 2, self.num_blocks))
        unknown = [b for b in blocks if not 0 <= b < self.num_blocks]
        if unknown:
            raise ValueError(f"self-attention blocks {unknown} outside 0..{self.num_blocks - 1}")
        cross: CrossMode | None = None
        mapper = index = alpha = None
        src = prompt_tokens(self.prompts.tokenizer, source_caption, self.max_length)
        tgt = prompt_tokens(self.prompts.tokenizer, target_caption, self.max_length)
        if settings.cross != "none" and src.ids != tgt.ids:  # equal tokens: P2P would map every map onto itself
            same_words = len(src.words) == len(tgt.words)
            if settings.cross == "replace" and not same_words:
                raise PromptMismatch(f"replace needs captions with as many words ({len(src.words)} vs {len(tgt.words)})")
            cross = "replace" if settings.cross == "replace" or (settings.cross == "auto" and same_words) else "refine"
            if cross == "replace":
                mapper = replace_mapper(src, tgt, self.max_length)
            else:
                index, alpha = refine_mapper(src, tgt, self.max_length)
        return EditControl(
            self_blocks=frozenset(blocks), self_switch=round(settings.self_switch * n), cross=cross,
            cross_until=round(settings.cross_steps * n), mapper=mapper, refine_index=index, refine_alpha=alpha,
            merge_ratio=settings.merge_ratio, merge_seed=seed,
        )

    def edit(
        self,
        image: np.ndarray,
        source_caption: str,
        target_caption: str,
        settings: EditSettings,
        *,
        mask: np.ndarray | None = None,
        seed: int = 0,
        keep_trajectory: bool = False,
    ) -> EditResult:
        height, width = image.shape[:2]
        if height % self.multiple or width % self.multiple:
            raise ValueError(f"image size {width}x{height} is not a multiple of {self.multiple}")
        control = self.control(source_caption, target_caption, settings, seed)
        self.controller.configure(control)
        schedule = Schedule.from_scheduler(self.models.scheduler, settings.steps)
        encoded = self.encode_image(image)
        grid = (encoded.shape[-2] // self.patch, encoded.shape[-1] // self.patch)
        (empty, empty_mask), (src, src_mask), (tgt, tgt_mask) = self.prompts.encode(
            ["", source_caption, target_caption], self.max_length,
        )

        # 3. inversion with the source caption
        inv_rows = 1 if settings.inversion_guidance == 1.0 else 2
        inv_embeds = src if inv_rows == 1 else torch.cat([empty, src])
        inv_mask = src_mask if inv_rows == 1 else torch.cat([empty_mask, src_mask])

        def predict(latents: torch.Tensor, i: int) -> torch.Tensor:
            self.controller.begin(CallLayout(branches=1, rows=inv_rows, grid=grid, step=i))
            eps = self._eps(latents.expand(inv_rows, -1, -1, -1), inv_embeds, inv_mask, schedule.timesteps[i], (height, width))
            return self._guide(eps, inv_rows, settings.inversion_guidance)

        inversion = invert(
            schedule, encoded, predict, max_corrections=settings.max_corrections, tolerance=settings.tolerance,
            relaxation=settings.relaxation, passes=settings.passes,
        )

        # 4. both branches from the inverted noise
        source_guidance = settings.inversion_guidance if settings.source_guidance is None else settings.source_guidance
        rows = 1 if source_guidance == 1.0 and settings.guidance == 1.0 else 2
        if rows == 1:
            embeds, masks = torch.cat([src, tgt]), torch.cat([src_mask, tgt_mask])
        else:
            embeds = torch.cat([empty, src, empty, tgt])
            masks = torch.cat([empty_mask, src_mask, empty_mask, tgt_mask])
        blend = None
        if mask is not None and settings.mask_blend:
            weights = torch.from_numpy(mask.astype(np.float32) / 255.0)[None, None].to(self.device)
            blend = F.interpolate(weights, size=tuple(encoded.shape[-2:]), mode="area")
        latents = torch.cat([inversion.noise, inversion.noise])
        sampler = Sampler(schedule)
        trajectory: list[torch.Tensor] = []
        for i in range(schedule.steps):
            self.controller.begin(CallLayout(branches=2, rows=rows, grid=grid, step=i))
            eps = self._eps(latents.repeat_interleave(rows, dim=0), embeds, masks, schedule.timesteps[i], (height, width))
            eps = torch.cat([self._guide(eps[:rows], rows, source_guidance), self._guide(eps[rows:], rows, settings.guidance)])
            latents = sampler.step(i, latents, eps)
            if blend is not None:
                along = inversion.trajectory[i + 1]
                latents = torch.cat([latents[:1], along + blend * (latents[1:] - along)])
            if keep_trajectory:
                trajectory.append(latents[1:].clone())
        self.controller.layout = None
        source_latents, target_latents = latents[:1], latents[1:]
        return EditResult(
            target=self.decode(target_latents),
            target_latents=target_latents,
            source_latents=source_latents,
            encoded=encoded,
            inversion=inversion,
            reconstruction_error=rms(source_latents - encoded) / max(rms(encoded), 1e-12),
            cross=control.cross,
            self_blocks=tuple(sorted(control.self_blocks)),
            self_switch=control.self_switch,
            blended=blend is not None,
            trajectory=trajectory if keep_trajectory else None,
        )
