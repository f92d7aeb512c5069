"""Build the frozen components (VQ tokenizer, text conditioner) and the transformer from a config.

Real components load by id with from_pretrained; `tiny: true` builds a random-init twin of
the same class (see tiny.py). Transformer weights load only from safetensors.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import ComponentConfig, ModelConfig
from .text import TextConditioner
from .tokenizer import VQTokenizer
from .transformer import EditMGTTransformer, build_transformer


def build_vq(cfg: ModelConfig) -> VQTokenizer:
    if cfg.vq.tiny:
        from .tiny import tiny_vq

        return VQTokenizer(tiny_vq(cfg.transformer.codebook_size, cfg.tiny_seed))
    from diffusers import VQModel

    vq = VQModel.from_pretrained(cfg.vq.id, subfolder=cfg.vq.subfolder, revision=cfg.vq.revision)
    _check_commit(cfg.vq)
    return VQTokenizer(vq)


def _check_commit(component: ComponentConfig) -> None:
    """The build's commit check (crispedit.models.hub.check_loaded) for a trainer component loaded by id."""
    from crispedit.models.hub import check_loaded
    from crispedit.models.spec import ModelSpec

    check_loaded(ModelSpec(id=component.id, revision=component.revision))


def build_text(cfg: ModelConfig) -> TextConditioner:
    if cfg.clip.tiny:
        from .tiny import tiny_clip_text_model, tiny_clip_tokenizer

        clip_tok = tiny_clip_tokenizer(cfg.clip_max_length)
        clip = tiny_clip_text_model(cfg.transformer.pooled_projection_dim, cfg.tiny_seed + 1, cfg.clip_max_length)
    else:
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        c = cfg.clip
        clip_tok = CLIPTokenizer.from_pretrained(c.id, subfolder=c.tokenizer_subfolder or c.subfolder or "", revision=c.revision)
        clip = CLIPTextModelWithProjection.from_pretrained(c.id, subfolder=c.subfolder or "", revision=c.revision)
        _check_commit(c)
    if cfg.llm.tiny:
        from .tiny import tiny_llm, tiny_llm_tokenizer

        llm_tok = tiny_llm_tokenizer(cfg.text_max_length)
        llm = tiny_llm(cfg.transformer.joint_attention_dim, cfg.tiny_seed + 2)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        c = cfg.llm
        llm_tok = AutoTokenizer.from_pretrained(c.id, subfolder=c.tokenizer_subfolder or c.subfolder or "", revision=c.revision, use_fast=True)
        llm_tok.padding_side = "right"
        llm = AutoModelForCausalLM.from_pretrained(c.id, subfolder=c.subfolder or "", revision=c.revision, dtype=torch.bfloat16)
        _check_commit(c)
    return TextConditioner(clip_tok, clip, llm_tok, llm, cfg.text_max_length, cfg.clip_max_length, cfg.llm_hidden_layer)


def load_safetensors_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A .safetensors file, or a folder holding one (diffusers layout)."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{path}: no .safetensors file")
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
        return state
    return load_file(str(path))


def load_released_weights(model: EditMGTTransformer, state: dict[str, torch.Tensor]) -> None:
    """Strict by name, except the task vectors, which the released layout does not have: when
    the state lacks them they keep their zero init (no effect until trained)."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("task_embed.")]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"transformer weights do not match the model: missing {missing[:8]} "
                           f"unexpected {result.unexpected_keys[:8]}")


def build_transformer_from_config(cfg: ModelConfig, init: ComponentConfig | None = None) -> EditMGTTransformer:
    """Random init, then (optionally) released weights loaded strictly by name."""
    model = build_transformer(cfg.transformer, cfg.num_tasks)
    init = init or cfg.init_transformer
    if init is not None and init.id:
        path = Path(init.id)
        if not path.exists():
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(init.id, revision=init.revision, allow_patterns=[f"{init.subfolder or ''}*"]))
            if init.subfolder:
                path = path / init.subfolder
        load_released_weights(model, load_safetensors_weights(path))
    return model


def load_trained_transformer(checkpoint: Path, cfg: ModelConfig, lora: tuple[int, float, tuple[str, ...]] | None = None,
                             use_ema: bool = True) -> EditMGTTransformer:
    """The transformer of a crispedit training checkpoint, EMA weights when present, LoRA merged.

    The result has exactly the plain parameter names again (plus `task_embed.weight` when the
    model has task vectors), whatever the training used.
    """
    model = build_transformer_from_config(cfg, init=None)
    state = load_safetensors_weights(checkpoint / "model.safetensors")
    ema = checkpoint / "ema.safetensors"
    if lora is not None and lora[0] > 0:
        from .lora import apply_lora, merge_lora

        apply_lora(model, *lora)
        model.load_state_dict(state, strict=True)
        if use_ema and ema.exists():
            model.load_state_dict(load_safetensors_weights(ema), strict=False)
        merge_lora(model)
    else:
        model.load_state_dict(state, strict=True)
        if use_ema and ema.exists():
            model.load_state_dict(load_safetensors_weights(ema), strict=False)
    return model.requires_grad_(True)
