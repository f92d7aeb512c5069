"""PixArt and T5 for DiT4Edit: loaded by id, revision and dtype, or built as tiny twins.

A PixArt checkpoint in diffusers layout has ``transformer/``, ``vae/``, ``scheduler/``,
``text_encoder/`` and ``tokenizer/`` subfolders. PixArt-Σ 2K ships only ``transformer/``;
its VAE and scheduler come from another repo (``components``). T5 (v1.1 XXL, ~4.8 B
parameters) is the same for PixArt-α and -Σ, so it is loaded once, from one repo, for
every checkpoint.

The twins are the SAME classes built from small configs with random weights, so the
pipeline runs offline in seconds: a :class:`PixArtTransformer2DModel` (4 blocks), an
:class:`AutoencoderKL` that downsamples by 8 like the real one, a :class:`T5EncoderModel`
and a T5 tokenizer built in-process with the ``tokenizers`` library (a Unigram model with
T5's "▁" metaspace pieces, so words split into several tokens as with the real
SentencePiece vocabulary: the case the word-to-token alignment must handle).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

from crispedit.models.devices import resolve_dtype
from crispedit.models.loading import load_model
from crispedit.models.spec import ModelSpec, register_twin
from crispedit.models.twins import TINY_WORDS, seeded, tiny_autoencoder, unused_tokens

#: PixArt's scheduler, as its checkpoints ship it (scheduler/scheduler_config.json of
#: PixArt-alpha/PixArt-XL-2-1024-MS and PixArt-Sigma-XL-2-1024-MS); the twins use it too.
PIXART_SCHEDULER = {
    "algorithm_type": "dpmsolver++",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "euler_at_final": False,
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "solver_order": 2,
    "solver_type": "midpoint",
    "steps_offset": 0,
    "thresholding": False,
    "timestep_spacing": "linspace",
    "use_karras_sigmas": False,
}

#: The twins' schedule: PixArt's, stopping at a milder top noise level (alpha_0 ~ 0.28 instead
#: of 0.006). A random network is no denoiser: at PixArt's top level its x0-prediction is off
#: by ~1/alpha_0 and its sampling map amplifies errors ~200x, which a trained model's does not.
TINY_SCHEDULER = {**PIXART_SCHEDULER, "beta_end": 0.005}

#: Tokens per prompt of the tiny tokenizer (PixArt-α uses 120, PixArt-Σ 300).
TINY_SEQUENCE_LENGTH = 16


@dataclass
class PixArtModels:
    """One checkpoint's denoiser, autoencoder and schedule."""

    transformer: Any  # diffusers.PixArtTransformer2DModel
    vae: Any  # diffusers.AutoencoderKL
    scheduler: Any  # diffusers.DPMSolverMultistepScheduler: only its schedule is read
    name: str


@dataclass
class TextModels:
    """T5: the tokenizer and the encoder."""

    tokenizer: Any
    encoder: Any  # transformers.T5EncoderModel
    name: str


def load_pixart(spec: ModelSpec, components: ModelSpec | None = None, seed: int = 0) -> PixArtModels:
    """The transformer from ``spec``; the VAE and scheduler from ``components`` (default: ``spec``)."""

    def load(model_id: str, **kwargs: Any) -> PixArtModels:
        from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtTransformer2DModel

        transformer = PixArtTransformer2DModel.from_pretrained(
            model_id, subfolder="transformer", torch_dtype=resolve_dtype(spec.dtype), **kwargs
        ).eval()
        source = components or spec
        where: dict[str, Any] = {"revision": source.revision} if source.revision else {}
        vae = AutoencoderKL.from_pretrained(source.id, subfolder="vae", torch_dtype=resolve_dtype(source.dtype), **where).eval()
        scheduler = DPMSolverMultistepScheduler.from_pretrained(source.id, subfolder="scheduler", **where)
        if components is not None:  # a second repository: load_model checks only ``spec``
            from crispedit.models.hub import check_loaded

            check_loaded(components)
        name = spec.describe() + (f" + {components.describe()}" if components else "")
        return PixArtModels(transformer, vae, scheduler, name)

    return load_model(spec, twin="dit4edit-pixart", load=load, seed=seed)


def load_text(spec: ModelSpec, seed: int = 0) -> TextModels:
    """T5 from ``spec``'s ``text_encoder/`` and ``tokenizer/`` subfolders."""

    def load(model_id: str, **kwargs: Any) -> TextModels:
        from transformers import AutoTokenizer, T5EncoderModel

        tokenizer = AutoTokenizer.from_pretrained(model_id, subfolder="tokenizer", **kwargs)
        encoder = T5EncoderModel.from_pretrained(model_id, subfolder="text_encoder", dtype=resolve_dtype(spec.dtype), **kwargs).eval()
        return TextModels(tokenizer, encoder, spec.describe())

    return load_model(spec, twin="dit4edit-t5", load=load, seed=seed)


# --- tiny twins ---------------------------------------------------------------------------


def tiny_t5_tokenizer(max_length: int = TINY_SEQUENCE_LENGTH, vocab_size: int | None = None) -> Any:
    """A T5 tokenizer built in-process: Unigram pieces with T5's "▁" word marks, ``</s>`` appended.

    Ids as in T5: pad 0, eos 1, unk 2. Whole words from TINY_WORDS are single pieces; any
    other word splits into letter pieces ("zebra" -> "▁z" "e" "b" "r" "a"), like rare words
    under the real SentencePiece model. ``vocab_size`` pads the pieces with unused ones (T5's 32100,
    for full-size smoke runs).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"▁{w}", -2.0) for w in TINY_WORDS]
    pieces += [("▁", -4.0)]
    pieces += [(c, -5.0) for c in string.ascii_lowercase + string.digits + ".,;:!?'-"]
    pieces += [(f"▁{c}", -5.5) for c in string.ascii_lowercase + string.digits]
    pieces += [(token, -20.0) for token in unused_tokens(len(pieces), vocab_size)]
    model = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    model.normalizer = None
    model.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    model.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    model.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=model, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0, model_max_length=max_length,
    )


def tiny_t5_encoder(seed: int, vocab_size: int, d_model: int = 32) -> Any:
    """T5EncoderModel shaped like T5 v1.1 (gated-GELU), 2 layers of width 32."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size, d_model=d_model, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
    )
    with seeded(seed):
        return T5EncoderModel(config).eval()


def tiny_pixart_transformer(seed: int, patch_size: int = 1, num_layers: int = 4, caption_channels: int = 32) -> Any:
    """PixArtTransformer2DModel as diffusers tests build it (ada_norm_single, learned sigma), 4 blocks.

    ``patch_size`` 1 keeps a token per latent pixel, so a 32-px image (4x4 latents) still
    gives a 4x4 token grid for merging; the real checkpoints use 2.

    The timestep embedding only sees the slow sinusoidal features (period > ~1,250 steps):
    random weights on the fast ones make the output jump between neighbouring timesteps,
    while a trained model's output varies smoothly along its trajectory, which is what
    multistep solvers (and the inversion's second-order history term) rely on.
    """
    import math

    import torch
    from diffusers import PixArtTransformer2DModel

    with seeded(seed):
        model = PixArtTransformer2DModel(
            sample_size=8, num_layers=num_layers, patch_size=patch_size, attention_head_dim=8, num_attention_heads=2,
            caption_channels=caption_channels, in_channels=4, cross_attention_dim=16, out_channels=8, attention_bias=True,
            activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6,
        ).eval()
    linear = model.adaln_single.emb.timestep_embedder.linear_1
    half = linear.in_features // 2  # diffusers' Timesteps: frequencies 10000^(-k/half), cos and sin halves
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
    slow = (frequencies <= 0.005).to(linear.weight.dtype)
    with torch.no_grad():
        linear.weight.mul_(torch.cat([slow, slow])[None])
    return model


def tiny_vae(seed: int) -> Any:
    """AutoencoderKL with four blocks, so it downsamples by 8 like PixArt's VAEs (32 px -> 4x4 latents).

    Its scaling factor gives images' latents about unit variance, as PixArt's VAEs' scaled
    latents have (the random encoder's raw latents are ~0.3).
    """
    return tiny_autoencoder(seed, (8, 8, 8, 8), norm_num_groups=4, sample_size=32, scaling_factor=3.0)


def tiny_scheduler() -> Any:
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**TINY_SCHEDULER)


@register_twin("dit4edit-pixart")
def tiny_pixart(seed: int) -> PixArtModels:
    return PixArtModels(tiny_pixart_transformer(seed), tiny_vae(seed + 1), tiny_scheduler(), "tiny")


@register_twin("dit4edit-t5")
def tiny_t5(seed: int) -> TextModels:
    tokenizer = tiny_t5_tokenizer()
    return TextModels(tokenizer, tiny_t5_encoder(seed, vocab_size=len(tokenizer)), "tiny")
