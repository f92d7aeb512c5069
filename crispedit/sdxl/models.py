"""SDXL pipelines by model id and revision, and their tiny random-weight twins.

Real checkpoints load through diffusers' own ``from_pretrained`` (and ``load_ip_adapter``);
``--tiny`` and the tests build the SAME classes from small configs instead, the way diffusers
tests itself (tests/pipelines/stable_diffusion_xl: a 2-level UNet with 64-wide cross
attention, a small AutoencoderKL, CLIP text encoders with hidden size 32). Differences from
those test rigs, on purpose:

* the tokenizers are written locally (crispedit.models.twins) instead of downloaded, with
  ``model_max_length=77`` like the real ones, and ``<|endoftext|>`` as the text encoders'
  EOS id so pooling reads the EOS position as it does for the real models;
* the VAE has four levels, so one latent pixel is 8x8 image pixels as in SDXL (mask
  arithmetic at latent resolution is then the real arithmetic);
* the UNet has three levels, attention at two resolutions, as SDXL's does;
* the ControlNet's zero convolutions are re-drawn at random (zero would make it a no-op);
* the IP-Adapter's random weights are written as a safetensors file in h94/IP-Adapter's
  layout and loaded with ``pipe.load_ip_adapter`` like the real one.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from crispedit.models.devices import resolve_device, resolve_dtype
from crispedit.models.loading import load_model
from crispedit.models.spec import TWINS, ModelSpec, register_twin
from crispedit.models.twins import seeded, tiny_autoencoder, write_tiny_clip_vocab
from crispedit.sdxl.options import RunOptions

#: diffusers pipeline class per use.
PIPELINES = {
    "t2i": "StableDiffusionXLPipeline",
    "img2img": "StableDiffusionXLImg2ImgPipeline",
    "inpaint": "StableDiffusionXLInpaintPipeline",
    "controlnet": "StableDiffusionXLControlNetPipeline",
    "controlnet_img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
    "controlnet_inpaint": "StableDiffusionXLControlNetInpaintPipeline",
}

SCHEDULERS = {
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
}

TINY_TEXT_LENGTH = 77
TINY_IMAGE_ENCODER_SIDE = 32


# --- tiny twins ---------------------------------------------------------------------------


def tiny_sdxl_unet(seed: int, cross_attention_dim: int = 32, *, in_channels: int = 4, levels: int = 2) -> Any:
    """UNet2DConditionModel shaped like SDXL's (text_time added embeddings, cross-attn down/up blocks), tiny.

    SDXL feeds the concatenated hidden states of both text encoders as
    ``encoder_hidden_states`` and the pooled text embedding + 6 time ids as added conditions.
    ``levels=3`` mirrors SDXL's layout (a plain full-resolution level, then two attention
    levels), so attention runs at two resolutions; ``in_channels=9`` is the inpainting UNet
    (latents + mask + masked-image latents).
    """
    from diffusers import UNet2DConditionModel

    layouts = {
        2: dict(
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            transformer_layers_per_block=(1, 2),
        ),
        3: dict(
            block_out_channels=(32, 32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 2, 4),
            transformer_layers_per_block=(1, 1, 2),
        ),
    }
    if levels not in layouts:
        raise ValueError(f"levels must be one of {sorted(layouts)}, got {levels}")
    with seeded(seed):
        return UNet2DConditionModel(
            sample_size=16,
            in_channels=in_channels,
            out_channels=4,
            layers_per_block=1,
            cross_attention_dim=cross_attention_dim,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + pooled text (32)
            norm_num_groups=32,
            **layouts[levels],
        ).eval()


def tiny_tokenizers() -> tuple[Any, Any]:
    """SDXL's two CLIP tokenizers: the same BPE, the second padding with '!' as SDXL's does."""
    from transformers import CLIPTokenizer

    directory = Path(tempfile.mkdtemp(prefix="crispedit-clip-vocab-"))
    try:
        write_tiny_clip_vocab(directory)
        files = {"vocab": str(directory / "vocab.json"), "merges": str(directory / "merges.txt")}
        first = CLIPTokenizer(**files, model_max_length=TINY_TEXT_LENGTH)
        second = CLIPTokenizer(**files, pad_token="!", model_max_length=TINY_TEXT_LENGTH)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return first, second


def tiny_text_encoders(seed: int, tokenizer: Any) -> tuple[Any, Any]:
    """CLIPTextModel and CLIPTextModelWithProjection (hidden 32, projection 32): 32 + 32 = the UNet's 64."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=TINY_TEXT_LENGTH, projection_dim=32, hidden_act="gelu", layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with seeded(seed):
        first = CLIPTextModel(config).eval()
    with seeded(seed + 1):
        second = CLIPTextModelWithProjection(config).eval()
    return first, second


def tiny_vae(seed: int) -> Any:
    """AutoencoderKL with four levels (8x downsampling, like SDXL's) and few channels."""
    return tiny_autoencoder(seed, (8, 16, 16, 16), norm_num_groups=8, sample_size=64, scaling_factor=0.13025, force_upcast=False)


def tiny_scheduler() -> Any:
    """SDXL base's scheduler config: Euler, scaled-linear betas 0.00085..0.012, leading spacing."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        steps_offset=1, timestep_spacing="leading", prediction_type="epsilon",
    )


def tiny_sdxl_components(seed: int, *, inpaint: bool = False) -> dict[str, Any]:
    """Every component an SDXL pipeline takes, tiny; ``inpaint`` gives the 9-channel inpainting UNet."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer, tokenizer_2 = tiny_tokenizers()
    text_encoder, text_encoder_2 = tiny_text_encoders(seed + 1, tokenizer)
    side = TINY_IMAGE_ENCODER_SIDE
    return {
        "unet": tiny_sdxl_unet(seed, cross_attention_dim=64, in_channels=9 if inpaint else 4, levels=3),
        "vae": tiny_vae(seed + 3),
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": tiny_scheduler(),
        "image_encoder": None,
        "feature_extractor": CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side}),
    }


def tiny_controlnet(seed: int) -> Any:
    """ControlNetModel shaped from the tiny SDXL UNet (a copy of its encoder), zero convolutions re-drawn."""
    import torch
    from diffusers import ControlNetModel

    unet = tiny_sdxl_unet(seed, cross_attention_dim=64, levels=3)
    with seeded(seed + 7):
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16))
        zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block, controlnet.controlnet_cond_embedding.conv_out]
        with torch.no_grad():
            for conv in zero_convs:
                conv.weight.normal_(0.0, 0.05)
                conv.bias.normal_(0.0, 0.05)
    return controlnet.eval()


def write_tiny_ip_adapter(directory: Path, seed: int, subfolder: str = "sdxl_models") -> Path:
    """Write an IP-Adapter for the tiny SDXL UNet in h94/IP-Adapter's layout (a 2-layer CLIP vision encoder); return ``directory``."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = tiny_sdxl_unet(seed, cross_attention_dim=64, levels=3)
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=TINY_IMAGE_ENCODER_SIDE,
        patch_size=8, projection_dim=32, num_channels=3,
    )
    with seeded(seed + 11):
        encoder = CLIPVisionModelWithProjection(vision).eval()
    return write_ip_adapter(directory, unet, encoder, seed + 12, subfolder)


def write_ip_adapter(directory: Path, unet: Any, encoder: Any, seed: int, subfolder: str = "sdxl_models") -> Path:
    """Random IP-Adapter weights for ``unet`` and ``encoder`` (a CLIPVisionModelWithProjection) in h94/IP-Adapter's layout.

    ``SUBFOLDER/ip-adapter_sdxl.safetensors`` holds ``image_proj.{proj,norm}.*`` (4 image
    tokens of the UNet's cross-attention width) and ``ip_adapter.{k}.to_{k,v}_ip.weight`` for
    k = 1, 3, 5, ... in the UNet's processor order, which is how diffusers' loader reads them;
    ``SUBFOLDER/image_encoder`` is the encoder saved as safetensors. ``unet`` may live on the
    meta device (only its config and processor names are read).
    """
    import torch
    from safetensors.torch import save_file

    cross = unet.config.cross_attention_dim
    projection = encoder.config.projection_dim
    dtype = encoder.dtype
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape: int, std: float = 0.2) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * std).to(dtype)

    tokens = 4
    tensors = {
        "image_proj.proj.weight": draw(tokens * cross, projection),
        "image_proj.proj.bias": draw(tokens * cross),
        "image_proj.norm.weight": torch.ones(cross, dtype=dtype),
        "image_proj.norm.bias": torch.zeros(cross, dtype=dtype),
    }
    key_id = 1
    widths = unet.config.block_out_channels
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = widths[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(widths))[int(name.split(".")[1])]
        else:
            hidden = widths[int(name.split(".")[1])]
        tensors[f"ip_adapter.{key_id}.to_k_ip.weight"] = draw(hidden, cross)
        tensors[f"ip_adapter.{key_id}.to_v_ip.weight"] = draw(hidden, cross)
        key_id += 2
    folder = Path(directory) / subfolder
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "ip-adapter_sdxl.safetensors"))
    encoder.save_pretrained(folder / "image_encoder", safe_serialization=True)
    return Path(directory)


def _tiny_ip_adapter(seed: int) -> Path:
    """The twin factory: a fresh temporary folder (the caller loads it, then removes it)."""
    return write_tiny_ip_adapter(Path(tempfile.mkdtemp(prefix="crispedit-tiny-ip-adapter-")), seed)


register_twin("sdxl")(tiny_sdxl_components)
register_twin("sdxl-inpaint")(lambda seed: tiny_sdxl_components(seed, inpaint=True))
register_twin("controlnet-sdxl")(tiny_controlnet)
register_twin("ip-adapter-sdxl")(_tiny_ip_adapter)


# --- loading --------------------------------------------------------------------------------


def load_controlnet(spec: ModelSpec, options: RunOptions, seed: int) -> Any:
    """diffusers' ControlNetModel by id and revision (or its tiny twin)."""
    from diffusers import ControlNetModel

    dtype = resolve_dtype(options.dtype, resolve_device(options.device))
    return load_model(
        spec, twin="controlnet-sdxl", seed=seed,
        load=lambda model_id, **kw: ControlNetModel.from_pretrained(model_id, torch_dtype=dtype, variant=options.variant, **kw),
    )


def load_pipeline(use: str, spec: ModelSpec, options: RunOptions, seed: int, *, controlnet: Any = None, twin: str = "sdxl") -> Any:
    """The diffusers pipeline for ``use`` (a key of PIPELINES) from a checkpoint or its tiny twin, prepared."""
    import diffusers

    cls = getattr(diffusers, PIPELINES[use])
    extra: dict[str, Any] = {"add_watermarker": False}  # an invisible watermark would change training pixels
    if controlnet is not None:
        extra["controlnet"] = controlnet
    dtype = resolve_dtype(options.dtype, resolve_device(options.device))

    def from_pretrained(model_id: str, **kw: Any) -> Any:
        return cls.from_pretrained(model_id, torch_dtype=dtype, variant=options.variant, use_safetensors=True, **extra, **kw)

    loaded = load_model(spec, twin=twin, seed=seed, load=from_pretrained)
    pipe = cls(**loaded, **extra) if isinstance(loaded, dict) else loaded
    return prepare(pipe, options)


def derived_pipeline(use: str, pipe: Any) -> Any:
    """Another pipeline class over the same loaded modules (no second copy in memory).

    diffusers' ``from_pipe`` casts every module to the dtype it is given, and to float32 when given
    none; the modules are shared, so without the pipeline's own dtype a half-precision refine stage
    silently became float32 throughout (twice the memory: the full-size stage passed 20 GiB on the
    CPU). Newer diffusers name the argument ``dtype``, older ones only know ``torch_dtype``.
    """
    import diffusers
    from diffusers.pipelines import pipeline_utils

    keyword = "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"
    derived = getattr(diffusers, PIPELINES[use]).from_pipe(pipe, **{keyword: pipe.unet.dtype})
    derived.set_progress_bar_config(disable=True)
    return derived


def attach_ip_adapter(pipe: Any, spec: ModelSpec, weight: str, seed: int) -> None:
    """Load an IP-Adapter through diffusers' ``load_ip_adapter`` (the tiny twin too, from its files).

    ``weight`` is the file's path inside the repository, e.g. ``sdxl_models/ip-adapter_sdxl.safetensors``;
    its folder is the subfolder, where the image encoder lives in ``image_encoder/``. diffusers'
    loader fetches that encoder without passing ``revision`` (so a pinned build would get ``main``'s
    1.8B-parameter encoder, and an offline cache holding only the pin fails), and only when the
    pipeline has none: so the encoder is loaded here at the spec's revision and registered first.
    """
    subfolder, _, weight_name = weight.rpartition("/")
    directory = TWINS["ip-adapter-sdxl"](seed) if spec.is_tiny else None
    where: dict[str, Any] = {"local_files_only": True} if directory is not None else (
        {"revision": spec.revision} if spec.revision else {})
    source = str(directory) if directory is not None else spec.id
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the twin's save/load bars are noise in a dry run
    try:
        pipe.register_modules(image_encoder=load_ip_adapter_encoder(source, subfolder, pipe.unet.dtype, **where))
        pipe.load_ip_adapter(source, subfolder=subfolder, weight_name=weight_name, **where)
        if directory is None:
            from crispedit.models.hub import check_loaded

            check_loaded(spec)  # loaded outside load_model: the same commit check
    finally:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
        transformers_logging.enable_progress_bar()
    pipe.image_encoder.to(pipe.unet.device, pipe.unet.dtype)


def load_ip_adapter_encoder(source: str, subfolder: str, dtype: Any, **where: Any) -> Any:
    """The CLIP vision encoder an IP-Adapter repository ships in ``SUBFOLDER/image_encoder``, at ``revision``."""
    from transformers import CLIPVisionModelWithProjection

    folder = f"{subfolder}/image_encoder" if subfolder else "image_encoder"
    return CLIPVisionModelWithProjection.from_pretrained(source, subfolder=folder, dtype=dtype, **where).eval()


def set_scheduler(pipe: Any, name: str) -> str:
    """Swap the sampler keeping the checkpoint's schedule config; returns the class name for provenance."""
    if name != "default":
        import diffusers

        pipe.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(pipe.scheduler.config)
    return type(pipe.scheduler).__name__


def prepare(pipe: Any, options: RunOptions) -> Any:
    """Device, precision and the memory/speed switches a recipe chose."""
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    if options.cpu_offload and device.type == "cuda":
        pipe.to(dtype=dtype)
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device=device, dtype=dtype)
    if options.vae_tiling:
        pipe.vae.enable_tiling()
    if options.compile:
        pipe.unet.compile()  # in place: the module keeps its type, so attention processors stay settable
    pipe.set_progress_bar_config(disable=True)
    return pipe
