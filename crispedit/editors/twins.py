"""Tiny random-init twins of the instruction-editing pipelines: the SAME classes as the real checkpoints.

Each twin is a ready diffusers pipeline whose components are the real classes
(QwenImageTransformer2DModel, AutoencoderKLQwenImage, Qwen2_5_VLForConditionalGeneration,
FluxTransformer2DModel, T5EncoderModel, CLIPTextModel, UNet2DConditionModel, AutoencoderKL)
built from small configs, the way diffusers' own fast tests build them
(tests/pipelines/qwenimage/test_qwenimage_edit{,_plus}.py, tests/pipelines/flux/test_pipeline_flux_kontext.py,
tests/pipelines/stable_diffusion/test_stable_diffusion_instruction_pix2pix.py). Registered with
the kit's :func:`~crispedit.models.spec.register_twin` as ``editor:<pipeline class>``. Differences
from those rigs, on purpose:

* no Hub: the diffusers tests load their tokenizers and the Qwen2-VL processor from
  ``hf-internal-testing/*``; here each is built in-process and wrapped in the class the real
  checkpoint uses: Qwen2Tokenizer over a byte-level BPE trained on the pipelines' own prompt
  templates (so the template's system part is exactly ``prompt_template_encode_start_idx`` = 64
  tokens, and the pipeline drops exactly the system prompt, as with real weights), the kit's CLIP
  BPE (crispedit.models.twins, through the SDXL twins' tokenizer), the PixArt twins' Unigram T5;
* the Qwen2-VL processor has no video processor (:func:`image_only_qwen2vl_processor`: the
  standard one cannot be built without torchvision) and a PIL image processor with a small
  ``longest_edge``, so the vision tower sees at most 16 merged tokens instead of ~1,300;
* the VAEs downsample as the real ones do (8x for InstructPix2Pix, 2x-per-level for the others),
  and the pix2pix twin has timbrooks/instruct-pix2pix's EulerAncestral scheduler, whose steps
  draw noise from the per-row generators.

Both Qwen pipelines resize every source to a hard-coded ~1 MP working area inside ``__call__``;
:func:`qwen_area` shrinks it for twins (a tiny twin at 1 MP takes minutes per call on a CPU).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

from crispedit.models.spec import register_twin
from crispedit.models.twins import TINY_WORDS, seeded, tiny_autoencoder

#: Words the tiny Qwen2 tokenizer knows whole, besides its templates' own words.
EDIT_WORDS = (*TINY_WORDS, "make", "it", "turn", "into", "add", "remove", "replace", "with", "change", "color", "to", "bad", "quality")

#: Qwen2-VL special tokens, in the order the real tokenizer numbers them (151643...).
QWEN_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)

#: The pixel area the Qwen twins work at instead of the pipelines' 1024 * 1024.
QWEN_TWIN_AREA = 128 * 96
#: The T5 prompt length of the Kontext twin (the pipeline's default pads every prompt to 512 tokens).
KONTEXT_TWIN_SEQUENCE = 32


# --- Qwen2 tokenizer and processor ---------------------------------------------------------


def _qwen_templates() -> list[str]:
    """The prompt templates both Qwen edit pipelines set in ``__init__`` (read from pipelines without components)."""
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline

    empty = dict.fromkeys(("scheduler", "vae", "text_encoder", "tokenizer", "processor", "transformer"))
    return [cls(**empty).prompt_template_encode for cls in (QwenImageEditPipeline, QwenImageEditPlusPipeline)]


@cache
def _qwen_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE vocabulary and merges trained on the Qwen edit templates and EDIT_WORDS (deterministic).

    Trained with the tokenizers library's BpeTrainer and Qwen2's own pre-tokenizer, so template
    words are single tokens and the merges are consistent.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    corpus = []
    for template in _qwen_templates():
        for special in QWEN_SPECIALS:
            template = template.replace(special, "\n")  # a special token is a word boundary, not a space
        corpus.append(template.replace("{}", "\n"))
    corpus += [" ".join(EDIT_WORDS), "\n".join(EDIT_WORDS), " ".join(EDIT_WORDS).title()]
    trainer = trainers.BpeTrainer(vocab_size=1000, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tokenizer.train_from_iterator(corpus * 4, trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges  # type: ignore[return-value]


def tiny_qwen2_tokenizer() -> Any:
    """Qwen2Tokenizer over the tiny BPE, with Qwen2-VL's special tokens."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = _qwen_bpe()
    vocab = dict(vocab)
    for special in QWEN_SPECIALS:
        vocab.setdefault(special, len(vocab))
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=list(merges), model_max_length=1024)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIALS], special_tokens=True)
    return tokenizer


def image_only_qwen2vl_processor(image_processor: Any, tokenizer: Any) -> Any:
    """A Qwen2VLProcessor without its video processor, which in transformers 5 needs torchvision.

    ``Qwen2VLProcessor(image_processor, tokenizer)`` raises (the processor checks its
    ``video_processor`` against a class that is not exported without torchvision), and so does
    ``from_pretrained`` on a real checkpoint's ``processor/`` folder. The editing pipelines never
    pass videos, so a subclass whose only parts are the image processor and the tokenizer is
    the same processor for them; the real backend assembles it too (see the diffusers backend).
    """
    return _image_only_processor_class()(image_processor=image_processor, tokenizer=tokenizer)


@cache
def _image_only_processor_class() -> type:
    from transformers import Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):  # type: ignore[misc]
        def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any) -> None:
            self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
            self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyQwen2VLProcessor


# --- Qwen-Image-Edit (and Plus) -------------------------------------------------------------


def tiny_qwen_vl(seed: int, tokenizer: Any) -> tuple[Any, Any]:
    """Qwen2_5_VLForConditionalGeneration (2 text + 2 vision layers, width 16) and its processor.

    The config follows diffusers' test (hidden 16, mrope_section [1, 1, 2], vision output 16 =
    the transformer's joint_attention_dim), with the tiny tokenizer's token ids.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "vocab_size": len(tokenizer), "max_position_embeddings": 2048,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}, "rope_theta": 1000000.0,
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16,
                       "fullatt_block_indexes": [1]},
        hidden_size=16, vocab_size=len(tokenizer), image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    with seeded(seed):
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    # 56*56 .. 112*112 px: 4x4 .. 8x8 patches of 14 px, merged 2x2 -> at most 16 image tokens.
    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112})
    return model, image_only_qwen2vl_processor(image_processor, tokenizer)


def tiny_qwen_edit_components(seed: int) -> dict[str, Any]:
    """Components of QwenImageEditPipeline and QwenImageEditPlusPipeline (the same set), diffusers' test sizes."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    with seeded(seed):
        transformer = QwenImageTransformer2DModel(
            patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=3,
            joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
        ).eval()
    z_dim = 4
    with seeded(seed + 1):
        vae = AutoencoderKLQwenImage(
            base_dim=z_dim * 6, z_dim=z_dim, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
            latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim,
        ).eval()
    tokenizer = tiny_qwen2_tokenizer()
    text_encoder, processor = tiny_qwen_vl(seed + 2, tokenizer)
    return {"transformer": transformer, "vae": vae, "scheduler": FlowMatchEulerDiscreteScheduler(),
            "text_encoder": text_encoder, "tokenizer": tokenizer, "processor": processor}


@register_twin("editor:QwenImageEditPipeline")
def tiny_qwen_image_edit(seed: int) -> Any:
    from diffusers import QwenImageEditPipeline

    return QwenImageEditPipeline(**tiny_qwen_edit_components(seed))


@register_twin("editor:QwenImageEditPlusPipeline")
def tiny_qwen_image_edit_plus(seed: int) -> Any:
    from diffusers import QwenImageEditPlusPipeline

    return QwenImageEditPlusPipeline(**tiny_qwen_edit_components(seed))


# --- FLUX.1 Kontext -----------------------------------------------------------------------


@register_twin("editor:FluxKontextPipeline")
def tiny_flux_kontext(seed: int) -> Any:
    """FluxKontextPipeline: diffusers' test transformer (1+1 layers), CLIP and T5 encoders of width 32, a 2-level VAE.

    The VAE has two levels rather than the test's one, so the image is really downsampled as
    by FLUX's VAE; it has no quant convs and FLUX's shift and scale, as the real one.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel

    from crispedit.dit4edit.models import tiny_t5_encoder, tiny_t5_tokenizer
    from crispedit.sdxl.models import tiny_text_encoders, tiny_tokenizers

    with seeded(seed):
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True,
        ).eval()
    tokenizer, _ = tiny_tokenizers()
    text_encoder, _ = tiny_text_encoders(seed + 1, tokenizer)
    tokenizer_2 = tiny_t5_tokenizer(KONTEXT_TWIN_SEQUENCE)
    text_encoder_2 = tiny_t5_encoder(seed + 2, len(tokenizer_2))
    vae = tiny_autoencoder(seed + 3, (4, 8), norm_num_groups=1, sample_size=32, scaling_factor=1.5035, shift_factor=0.0609,
                           use_quant_conv=False, use_post_quant_conv=False)
    return FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, transformer=transformer, vae=vae, image_encoder=None, feature_extractor=None,
    )


# --- InstructPix2Pix ----------------------------------------------------------------------


@register_twin("editor:StableDiffusionInstructPix2PixPipeline")
def tiny_instruct_pix2pix(seed: int) -> Any:
    """StableDiffusionInstructPix2PixPipeline: diffusers' test UNet (8 input channels = latents + image latents).

    One layer per block; a four-level VAE (8x, as SD 1.5's) with SD's scaling factor 0.18215;
    timbrooks/instruct-pix2pix's scheduler (EulerAncestral, scaled-linear betas) instead of PNDM.
    """
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel

    from crispedit.sdxl.models import tiny_text_encoders, tiny_tokenizers

    with seeded(seed):
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=8, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
        ).eval()
    vae = tiny_autoencoder(seed + 1, (8, 16, 16, 16), norm_num_groups=8, sample_size=64, scaling_factor=0.18215)
    tokenizer, _ = tiny_tokenizers()
    text_encoder, _ = tiny_text_encoders(seed + 2, tokenizer)
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                num_train_timesteps=1000, steps_offset=1)
    return StableDiffusionInstructPix2PixPipeline(
        unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )


# --- the Qwen pipelines' fixed working area ------------------------------------------------

_AREA_LOCK = threading.RLock()


@contextmanager
def qwen_area(area: int = QWEN_TWIN_AREA) -> Iterator[None]:
    """Scale the Qwen edit pipelines' working area (1024*1024 for the VAE, 384*384 for Plus's VL image) to ``area``.

    Both pipelines resize the source to ``calculate_dimensions(1024 * 1024, ratio)`` inside
    ``__call__`` whatever its size, so a tiny twin on a 64 px image would encode a ~1 MP image.
    The only hook is the module-level ``calculate_dimensions`` both look up at call time: for the
    block it is replaced by one that scales the requested area by ``area / 1024**2`` (Plus's VL
    image shrinks in the same ratio). Process-global, hence the lock; for twins only.
    """
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as edit
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as plus

    scale = area / (1024 * 1024)
    with _AREA_LOCK:
        originals = (edit.calculate_dimensions, plus.calculate_dimensions)

        def scaled(original: Any) -> Any:
            def calculate_dimensions(target_area: float, ratio: float) -> Any:
                return original(target_area * scale, ratio)

            return calculate_dimensions

        edit.calculate_dimensions, plus.calculate_dimensions = scaled(originals[0]), scaled(originals[1])
        try:
            yield
        finally:
            edit.calculate_dimensions, plus.calculate_dimensions = originals
