"""Tiny random-init twins of the mask models: the SAME classes as the real checkpoints, small configs.

``--tiny`` builds and the tests run the whole grounding path through these, so every line
of pre- and post-processing that real weights go through is exercised without a download.
Their outputs are meaningless (random weights) but deterministic for a seed.

Image processors are the PIL-backend ones: the torchvision-backed "fast" processors need
torchvision, which this project does not install.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crispedit.models.spec import register_twin

#: Whole words the tiny tokenizers know, so common keywords are single tokens and the rest
#: fall back to several sub-word tokens (which the tests need: multi-token words).
TINY_WORDS = (
    "a", "the", "of", "and", "cat", "dog", "car", "red", "blue", "hat", "tree", "sky", "man",
    "woman", "house", "photo", "astronaut", "rocket", "coffee", "chelsea", "camera", "none",
)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch for a block without disturbing the caller's global RNG state."""
    import torch  # imported here so registering twins costs nothing until one is built

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def tiny_bert_vocab() -> dict[str, int]:
    """A WordPiece vocabulary: specials, punctuation, letters and ##letters (so any word tokenizes), a few words."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "-"]
    tokens += list(string.ascii_lowercase) + [f"##{c}" for c in string.ascii_lowercase]
    tokens += [w for w in TINY_WORDS if w not in tokens]
    return {token: i for i, token in enumerate(tokens)}


def tiny_bert_tokenizer() -> Any:
    from transformers import BertTokenizer

    return BertTokenizer(vocab=tiny_bert_vocab())


def tiny_grounding_dino(seed: int) -> tuple[Any, Any]:
    """GroundingDinoForObjectDetection with a 1-layer BERT, a 4-stage 1-block Swin and 10 queries, plus its processor.

    Constraints found by building it: d_model must be a multiple of 32 (GroupNorm(32)),
    the decoder needs >= 2 layers (bbox heads are tied from layer 0 onwards), and the
    input must be >= 128 px so the extra stride-2 level is larger than 1x1.
    """
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    tokenizer = tiny_bert_tokenizer()
    backbone = SwinConfig(
        image_size=128, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
        window_size=4, out_indices=[2, 3, 4],
    )
    text = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, num_queries=10, encoder_layers=1, decoder_layers=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
        d_model=32, num_feature_levels=4, encoder_n_points=2, decoder_n_points=2, max_text_len=32,
        disable_custom_kernels=True,
    )
    with seeded(seed):
        model = GroundingDinoForObjectDetection(config).eval()
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 128, "longest_edge": 128})
    return model, GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)


def tiny_sam(seed: int) -> tuple[Any, Any]:
    """SamModel with a 2-layer 64-px ViT encoder and a 2-layer mask decoder, plus its processor (64-px pad)."""
    from transformers import (
        SamConfig,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    vision = SamVisionConfig(
        hidden_size=16, output_channels=8, num_hidden_layers=2, num_attention_heads=2, image_size=64,
        patch_size=8, window_size=4, global_attn_indexes=[1], num_pos_feats=4, mlp_dim=32,
    )
    prompt = SamPromptEncoderConfig(hidden_size=8, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=8, mlp_dim=16, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=8)
    config = SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    with seeded(seed):
        model = SamModel(config).eval()
    image_processor = SamImageProcessorPil(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
        mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16},
    )
    return model, SamProcessor(image_processor=image_processor)


register_twin("grounding-dino")(tiny_grounding_dino)
register_twin("sam")(tiny_sam)


# --- SDXL side: the attention store's tests and the pair-generation issue's --tiny path ---

#: Byte-level BPE needs every byte symbol; a tiny vocab keeps the ASCII letters and </w> forms.
def write_tiny_clip_vocab(directory: str | Path, merges: list[tuple[str, str]] | None = None) -> Path:
    """Write vocab.json + merges.txt for a CLIPTokenizer that knows letters, a few words and </w> endings.

    Words in TINY_WORDS are single tokens (their merges are listed); any other lowercase
    word splits into letter tokens, so it is the multi-token case.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab: list[str] = ["<|startoftext|>", "<|endoftext|>", "!", ",", "."]
    letters = list(string.ascii_lowercase)
    vocab += letters + [f"{c}</w>" for c in letters] + [".</w>", ",</w>", "!</w>"]
    merge_list: list[tuple[str, str]] = list(merges or [])
    for word in TINY_WORDS:
        if len(word) == 1:
            continue
        # left-to-right merges: w o r d</w> -> wo r d</w> -> wor d</w> -> word</w>
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for nxt in pieces[1:]:
            pair = (current, nxt)
            if pair not in merge_list:
                merge_list.append(pair)
            current = current + nxt
            if current not in vocab:
                vocab.append(current)
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merge_list]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def tiny_clip_tokenizer(directory: str | Path, max_length: int = 16) -> Any:
    """A CLIPTokenizer read from the tiny vocab files (written if missing)."""
    from transformers import CLIPTokenizer

    directory = Path(directory)
    if not (directory / "vocab.json").exists():
        write_tiny_clip_vocab(directory)
    return CLIPTokenizer(
        vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"), model_max_length=max_length,
    )


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
