"""Full-size smoke runs: every model stage on the RELEASED architectures, random weights, on the CPU.

The tiny twins prove the code paths on small shapes; these prove that the same paths run with
the real checkpoints' shapes (SDXL's time ids and pooled embeddings at 2048/1280 widths, the
bigG IP-Adapter encoder, ControlNet's residuals, PixArt with T5-XXL, EditMGT's 960M transformer
with Gemma-2-2B, GroundingDINO-base + SAM-ViT-H, CLIP ViT-L/14, DINOv2-L) and fit in memory.

How a model is made: its class is built under accelerate's ``init_empty_weights`` (parameters
on the meta device, buffers real) in bfloat16, moved to real storage with ``to_empty`` and
given a normal random init (each module's ``reset_parameters``; norm weights 1, other vectors
0, other tensors N(0, 0.02)); the buffers the constructor computed are put back. Configs are
the checkpoints' ``config.json`` values, written out below. No package installed here ships
the real tokenizer files (CLIP BPE, T5/Gemma SentencePiece, BERT WordPiece), so each tokenizer
is built in-process with the real vocabulary SIZE (unused tokens pad the kit's small vocab).

Each stage runs through crispedit's own code: the stage class itself (``p2p``, ``inpaint``,
``refine``, ``dit4edit``, ``ground``, ``clip_filter``), which loads its "tiny" model spec
from the twin registry, where :func:`full_size_twins` puts these builders for the run; EditMGT
through its editor backend's ``edit``. ``benchmarks/full_size.py`` times them, and
``tests/test_full_size.py`` runs them under ``CRISPEDIT_FULLSIZE=1``.
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

DTYPE = torch.bfloat16
CLIP_VOCAB = 49408
T5_VOCAB = 32128  # the embedding rows of T5 v1.1 (its SentencePiece has 32000 pieces + 100 sentinels)
T5_PIECES = 32100
BERT_VOCAB = 30522
GEMMA_VOCAB = 256000


# --- making a model ----------------------------------------------------------------------


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def normal_init(model: torch.nn.Module) -> None:
    """A random init for every parameter: ``reset_parameters`` where a module has one, else norms 1, vectors 0, N(0, 0.02)."""
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "reset_parameters") and not isinstance(module, torch.nn.MultiheadAttention):
                module.reset_parameters()
                continue
            for name, param in module.named_parameters(recurse=False):
                if param.ndim <= 1:
                    param.fill_(1.0 if name == "weight" else 0.0)
                else:
                    param.normal_(0.0, 0.02)


def materialize(build: Callable[[], Any], dtype: torch.dtype = DTYPE) -> Any:
    """``build()`` on the meta device, then real CPU storage and a normal init, in ``dtype``."""
    from accelerate import init_empty_weights

    with default_dtype(dtype), init_empty_weights(include_buffers=False):
        model = build()
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers() if not buffer.is_meta}
    model.to_empty(device="cpu")
    normal_init(model)
    with torch.no_grad():
        for name, value in buffers.items():
            model.get_buffer(name).copy_(value)
    return model.eval().requires_grad_(False)


def parameters(*models: Any) -> int:
    return sum(p.numel() for m in models if m is not None for p in m.parameters())


# --- configs of the released checkpoints (their config.json values) ---------------------


def sdxl_unet(in_channels: int = 4) -> Any:
    """stabilityai/stable-diffusion-xl-base-1.0 unet/ (in_channels 9: diffusers/stable-diffusion-xl-1.0-inpainting-0.1)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128, in_channels=in_channels, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816, norm_num_groups=32,
    )


def sdxl_controlnet() -> Any:
    """diffusers/controlnet-canny-sdxl-1.0."""
    from diffusers import ControlNetModel

    return ControlNetModel(
        in_channels=4, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816, conditioning_embedding_out_channels=(16, 32, 96, 256),
    )


def sd_vae(scaling_factor: float, force_upcast: bool) -> Any:
    """The SD/SDXL AutoencoderKL (4 levels 128-512, 4 latent channels)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=1024,
        scaling_factor=scaling_factor, force_upcast=force_upcast,
    )


def clip_text(hidden: int, layers: int, heads: int, intermediate: int, projection: int, act: str, tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=intermediate,
        projection_dim=projection, hidden_act=act, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def clip_tokenizer(pad: str | None = None) -> Any:
    """A CLIPTokenizer with CLIP's 49408-entry vocabulary size, 77 tokens (SDXL's second one pads with '!')."""
    from transformers import CLIPTokenizer

    from crispedit.models.twins import write_tiny_clip_vocab

    directory = write_tiny_clip_vocab(tempfile.mkdtemp(prefix="crispedit-full-clip-"), symbols="0123456789", size=CLIP_VOCAB)
    kwargs = {"pad_token": pad} if pad else {}
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77, **kwargs)


def bigg_image_encoder() -> Any:
    """h94/IP-Adapter sdxl_models/image_encoder: OpenCLIP ViT-bigG/14 as CLIPVisionModelWithProjection (1.8B)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=1664, intermediate_size=8192, num_attention_heads=16, num_hidden_layers=48, patch_size=14, image_size=224,
        projection_dim=1280, hidden_act="gelu", layer_norm_eps=1e-5,
    )
    return CLIPVisionModelWithProjection(config)


# --- the twins' full-size counterparts -----------------------------------------------------


def sdxl_components(seed: int, *, inpaint: bool = False) -> dict[str, Any]:
    """SDXL base (or the inpainting UNet) with CLIP ViT-L + OpenCLIP bigG text encoders, the SDXL VAE, Euler."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from crispedit.sdxl.models import tiny_scheduler

    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer(pad="!")
    return {
        "unet": materialize(lambda: sdxl_unet(9 if inpaint else 4)),
        "vae": materialize(lambda: sd_vae(0.13025, force_upcast=True)),
        "text_encoder": materialize(lambda: CLIPTextModel(clip_text(768, 12, 12, 3072, 768, "quick_gelu", tokenizer))),
        "text_encoder_2": materialize(lambda: CLIPTextModelWithProjection(clip_text(1280, 32, 20, 5120, 1280, "gelu", tokenizer))),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": tiny_scheduler(),  # SDXL base's scheduler config
        "image_encoder": None,
        "feature_extractor": CLIPImageProcessorPil(),  # 224 px, CLIP's statistics
    }


def ip_adapter_folder(seed: int) -> Path:
    """h94/IP-Adapter's sdxl_models layout with the bigG encoder (written to a temporary folder the loader reads)."""
    from accelerate import init_empty_weights

    from crispedit.sdxl.models import write_ip_adapter

    with init_empty_weights():
        unet = sdxl_unet()
    encoder = materialize(bigg_image_encoder)
    folder = write_ip_adapter(Path(tempfile.mkdtemp(prefix="crispedit-full-ip-adapter-")), unet, encoder, seed)
    del encoder
    gc.collect()
    return folder


def pixart(seed: int) -> Any:
    """PixArt-alpha/PixArt-XL-2-1024-MS transformer (28 blocks, 16 x 72, caption 4096), the SD VAE, DPM-Solver."""
    from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel

    from crispedit.dit4edit.models import PixArtModels

    transformer = materialize(lambda: PixArtTransformer2DModel(
        sample_size=128, num_layers=28, attention_head_dim=72, num_attention_heads=16, caption_channels=4096, in_channels=4,
        out_channels=8, patch_size=2, cross_attention_dim=1152, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=None,
    ))
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000, prediction_type="epsilon",
        solver_order=2, algorithm_type="dpmsolver++", lower_order_final=True, timestep_spacing="linspace",
    )
    return PixArtModels(transformer, materialize(lambda: sd_vae(0.18215, force_upcast=False)), scheduler, "full-size PixArt-XL-2")


def t5_xxl(seed: int) -> Any:
    """google/t5-v1_1-xxl's encoder (PixArt's text_encoder/: 24 layers, d_model 4096, 64 heads, gated GELU), 4.8B."""
    from transformers import T5Config, T5EncoderModel

    from crispedit.dit4edit.models import TextModels, tiny_t5_tokenizer

    config = T5Config(
        vocab_size=T5_VOCAB, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, relative_attention_num_buckets=32,
        feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6, is_encoder_decoder=False, use_cache=False,
        tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
    )
    tokenizer = tiny_t5_tokenizer(max_length=300, vocab_size=T5_PIECES)
    return TextModels(tokenizer, materialize(lambda: T5EncoderModel(config)), "full-size T5-XXL encoder")


def grounding_dino(seed: int) -> tuple[Any, Any]:
    """IDEA-Research/grounding-dino-base: Swin-B (384 px, window 12) + BERT-base, 900 queries, 6+6 layers, d_model 256."""
    from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoProcessor, SwinConfig
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

    from crispedit.masks.twins import tiny_bert_tokenizer

    backbone = SwinConfig(
        image_size=384, patch_size=4, embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12,
        out_indices=[2, 3, 4], out_features=["stage2", "stage3", "stage4"],
    )
    text = BertConfig(vocab_size=BERT_VOCAB, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, num_queries=900, encoder_layers=6, decoder_layers=6, encoder_ffn_dim=2048,
        decoder_ffn_dim=2048, encoder_attention_heads=8, decoder_attention_heads=8, d_model=256, num_feature_levels=4,
        encoder_n_points=4, decoder_n_points=4, max_text_len=256, two_stage=True, disable_custom_kernels=True,
    )
    model = materialize(lambda: GroundingDinoForObjectDetection(config))
    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil(), tokenizer=tiny_bert_tokenizer(BERT_VOCAB))
    return model, processor


def sam_vit_h(seed: int) -> tuple[Any, Any]:
    """facebook/sam-vit-huge: ViT-H encoder (32 layers, 1280 wide, global attention at 7/15/23/31) on 1024 px."""
    from transformers import SamConfig, SamModel, SamProcessor, SamVisionConfig
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    vision = SamVisionConfig(
        hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31], mlp_dim=5120,
        output_channels=256, image_size=1024, patch_size=16, window_size=14,
    )
    model = materialize(lambda: SamModel(SamConfig(vision_config=vision)))
    return model, SamProcessor(image_processor=SamImageProcessorPil())


def clip_vit_l(seed: int) -> tuple[Any, Any, Any]:
    """openai/clip-vit-large-patch14 with its 224-px preprocessing."""
    from transformers import CLIPConfig, CLIPModel

    from crispedit.models.clip import _CLIP_MEAN, _CLIP_STD, Preprocess

    tokenizer = clip_tokenizer()
    text = clip_text(768, 12, 12, 3072, 768, "quick_gelu", tokenizer).to_dict()
    vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
                  image_size=224, hidden_act="quick_gelu")
    model = materialize(lambda: CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=768)))
    return model, tokenizer, Preprocess(224, (224, 224), _CLIP_MEAN, _CLIP_STD)


def dinov2_large(seed: int) -> tuple[Any, Any]:
    """facebook/dinov2-with-registers-large (24 layers, 1024 wide, patch 14, 4 registers) with its 224-px preprocessing."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from crispedit.models.clip import _IMAGENET_MEAN, _IMAGENET_STD, Preprocess

    config = Dinov2WithRegistersConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4, patch_size=14, image_size=518, num_register_tokens=4,
    )
    return materialize(lambda: Dinov2WithRegistersModel(config)), Preprocess(256, (224, 224), _IMAGENET_MEAN, _IMAGENET_STD)


FULL_TWINS: dict[str, Callable[[int], Any]] = {
    "sdxl": sdxl_components,
    "sdxl-inpaint": lambda seed: sdxl_components(seed, inpaint=True),
    "controlnet-sdxl": lambda seed: materialize(sdxl_controlnet),
    "ip-adapter-sdxl": ip_adapter_folder,
    "dit4edit-pixart": pixart,
    "dit4edit-t5": t5_xxl,
    "grounding-dino": grounding_dino,
    "sam": sam_vit_h,
    "clip-scorer": clip_vit_l,
    "dino-scorer": dinov2_large,
}


@contextmanager
def full_size_twins() -> Iterator[None]:
    """While open, a stage whose model spec is ``tiny`` gets the full-size architecture instead of the tiny twin."""
    import crispedit.dit4edit.models  # noqa: F401  (registers the twins this replaces)
    import crispedit.masks.twins  # noqa: F401
    import crispedit.models.clip  # noqa: F401
    import crispedit.sdxl.models  # noqa: F401
    from crispedit.models.spec import TWINS

    saved = dict(TWINS)
    TWINS.update(FULL_TWINS)
    try:
        yield
    finally:
        TWINS.clear()
        TWINS.update(saved)


# --- the stages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Smoke:
    """One stage's run: how many parameters it held, what came out, seconds to build and to run."""

    parameters: int
    outputs: list[Any]
    load_s: float
    run_s: float


def pictures(side: int, n: int = 1) -> list[np.ndarray]:
    """Smooth images with an object (edges for Canny, structure for the encoders)."""
    y, x = np.mgrid[0:side, 0:side]
    base = np.stack([x * 255 // side, y * 255 // side, np.full_like(x, 100)], -1).astype(np.uint8)
    out = []
    for k in range(n):
        image = base.copy()
        image[side // 4 : side // 2 + k, side // 3 : 2 * side // 3] = (200, 50 + 10 * k, 40)
        out.append(image)
    return out


def samples(side: int, n: int = 1, **fields: Any) -> list[Any]:
    from crispedit.core.sample import Sample, sample_id

    out = []
    for i, image in enumerate(pictures(side, n)):
        mask = np.zeros((side, side), np.uint8)
        mask[side // 4 : side // 2, side // 3 : 2 * side // 3] = 255
        sample = Sample(id=sample_id("full", i), index=i, source_ref=f"full{i}", source_caption="a photo of a red cat on the grass",
                        target_caption="a photo of a blue cat on the grass", edit_objects=["cat"], source_image=image, mask=mask)
        for key, value in fields.items():
            setattr(sample, key, value)
        out.append(sample)
    return out


def make_stage(kind: str, **params: Any) -> Any:
    from crispedit.core.stage import BuildContext
    from crispedit.recipe.catalog import STAGES

    cls = STAGES[kind]
    return cls(cls.Params.model_validate(params), BuildContext(recipe_name="full", fingerprint="full", seed=0, tiny=False))


def stage_parameters(stage: Any) -> int:
    """Parameters of every torch module the stage holds (each counted once)."""
    seen: dict[int, torch.nn.Module] = {}

    def visit(value: Any, depth: int) -> None:
        if isinstance(value, torch.nn.Module):
            seen.setdefault(id(value), value)
        elif depth < 4 and hasattr(value, "__dict__") and not isinstance(value, type):
            for item in vars(value).values():
                visit(item, depth + 1)
        elif depth < 4 and isinstance(value, dict | list | tuple):
            for item in value.values() if isinstance(value, dict) else value:
                visit(item, depth + 1)

    visit(stage, 0)
    unique = {id(p): p for m in seen.values() for p in m.parameters()}
    return sum(p.numel() for p in unique.values())


def run_stage(kind: str, batch: list[Any], **params: Any) -> Smoke:
    with full_size_twins():
        start = time.perf_counter()
        stage = make_stage(kind, **params)
        stage.setup()
        loaded = time.perf_counter()
        out = stage(batch)
        return Smoke(stage_parameters(stage), out, loaded - start, time.perf_counter() - loaded)


SDXL = {"dtype": "bfloat16", "device": "cpu", "max_batch": 1}


def sdxl_p2p(side: int, steps: int) -> Smoke:
    """SDXL base with Prompt-to-Prompt: source and target in one call (time ids, pooled bigG embeddings)."""
    return run_stage("p2p", samples(side), base_model="tiny", height=side, width=side, steps=steps, **SDXL)


def sdxl_inpaint(side: int, steps: int) -> Smoke:
    """The 9-channel SDXL inpainting UNet repainting the mask."""
    return run_stage("inpaint", samples(side), inpaint_model="tiny", steps=steps, **SDXL)


def refine(side: int, steps: int) -> Smoke:
    """ControlNet-canny + IP-Adapter (bigG image encoder) re-rendering the masked target."""
    batch = samples(side, target_image=pictures(side, 2)[1])
    return run_stage("refine", batch, base_model="tiny", controlnet_model="tiny", ip_adapter_model="tiny", region="mask",
                     steps=steps, **SDXL)


def dit4edit(side: int, steps: int) -> Smoke:
    """DiT4Edit on PixArt-XL-2 with the T5-XXL encoder: inversion + joint denoising of both branches."""
    checkpoint = {"model": "tiny", "max_pixels": 2048 * 2048, "max_sequence_length": 120}
    return run_stage("dit4edit", samples(side), checkpoints=[checkpoint], text_model="tiny", steps=steps, sizes=[f"{side}x{side}"],
                     device="cpu")


def ground(side: int, steps: int) -> Smoke:
    """GroundingDINO-base boxes for the keyword, SAM-ViT-H masks (thresholds 0 so one random box reaches SAM)."""
    return run_stage("ground", samples(side), detector_model="tiny", segmenter_model="tiny", box_threshold=0.0, text_threshold=0.0,
                     max_boxes_per_keyword=1, device="cpu")


def clip_dino(side: int, steps: int) -> Smoke:
    """CLIP ViT-L/14 and DINOv2-L (with registers) scoring a pair in clip_filter."""
    batch = samples(side, target_image=pictures(side, 2)[1])
    return run_stage("clip_filter", batch, clip_model="tiny", dino_model="tiny", device="cpu")


def editmgt(side: int, steps: int) -> Smoke:
    """EditMGT's 960M transformer (the bundled `full` config at a small resolution), Meissonic's VQ, CLIP-H text, Gemma-2-2B."""
    from diffusers import VQModel
    from transformers import CLIPTextModelWithProjection, Gemma2Config, Gemma2ForCausalLM

    from crispedit.core.presets import find_preset
    from crispedit.editors.editmgt_backend import EditMGTEditor, EditMGTParams
    from crispedit.mgt.config import MGTConfig, apply_overrides
    from crispedit.mgt.pipeline import EditPipeline
    from crispedit.mgt.text import TextConditioner
    from crispedit.mgt.tiny import tiny_llm_tokenizer
    from crispedit.mgt.tokenizer import VQTokenizer
    from crispedit.mgt.transformer import build_transformer

    start = time.perf_counter()
    cfg = apply_overrides(MGTConfig.load(find_preset("mgt", "full")), [f"model.resolution={side}"])
    m = cfg.model
    transformer = materialize(lambda: build_transformer(m.transformer, m.num_tasks))
    vq = materialize(lambda: VQModel(  # MeissonFlow/Meissonic vqvae/ (aMUSEd's VQ-GAN: 16x down, 8192 codes)
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 5, up_block_types=("UpDecoderBlock2D",) * 5,
        block_out_channels=(128, 256, 256, 512, 768), layers_per_block=2, latent_channels=64, num_vq_embeddings=8192,
        norm_num_groups=32, vq_embed_dim=64, lookup_from_codebook=True, mid_block_add_attention=False, force_upcast=False,
        scaling_factor=0.18215,
    ), dtype=torch.float32)
    clip_tok = clip_tokenizer()
    clip = materialize(lambda: CLIPTextModelWithProjection(clip_text(1024, 24, 16, 4096, 1024, "gelu", clip_tok)))
    gemma = Gemma2Config(
        vocab_size=GEMMA_VOCAB, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, max_position_embeddings=8192, sliding_window=4096, query_pre_attn_scalar=256,
        final_logit_softcapping=30.0, attn_logit_softcapping=50.0, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    llm = materialize(lambda: Gemma2ForCausalLM(gemma))
    text = TextConditioner(clip_tok, clip, tiny_llm_tokenizer(m.text_max_length, GEMMA_VOCAB), llm, m.text_max_length, m.clip_max_length,
                           m.llm_hidden_layer)
    editor = EditMGTEditor(EditMGTParams(steps=steps), tiny=False, twin_seed=0)
    editor.pipe = EditPipeline(cfg, transformer, VQTokenizer(vq), text, torch.device("cpu"))
    loaded = time.perf_counter()
    image = editor.edit(pictures(side)[0], "make the cat blue", seed=0, task=None)
    return Smoke(parameters(transformer, vq, clip, llm), [image], loaded - start, time.perf_counter() - loaded)


STAGES: dict[str, Callable[[int, int], Smoke]] = {
    "sdxl_p2p": sdxl_p2p,
    "sdxl_inpaint": sdxl_inpaint,
    "refine": refine,
    "dit4edit": dit4edit,
    "editmgt": editmgt,
    "ground": ground,
    "clip_dino": clip_dino,
}
