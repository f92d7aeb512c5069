"""Tiny random-init twins of the mask models (GroundingDINO, SAM): the SAME classes as the real checkpoints, small configs.

``--tiny`` builds and the tests run the whole grounding path through these, so every line
of pre- and post-processing that real weights go through is exercised without a download.
Their outputs are meaningless (random weights) but deterministic for a seed.

Image processors are the PIL-backend ones: the torchvision-backed "fast" processors need
torchvision, which this project does not install.
"""

from __future__ import annotations

import string
from typing import Any

from crispedit.models.spec import register_twin
from crispedit.models.twins import TINY_WORDS, seeded, unused_tokens


def tiny_bert_vocab(size: int | None = None) -> dict[str, int]:
    """A WordPiece vocabulary: specials, punctuation, letters and ##letters (so any word tokenizes), a few words;
    ``size`` pads it with unused tokens (BERT-base's 30522, for full-size smoke runs)."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "-"]
    tokens += list(string.ascii_lowercase) + [f"##{c}" for c in string.ascii_lowercase]
    tokens += [w for w in TINY_WORDS if w not in tokens]
    tokens += unused_tokens(len(tokens), size)
    return {token: i for i, token in enumerate(tokens)}


def tiny_bert_tokenizer(size: int | None = None) -> Any:
    from transformers import BertTokenizer

    return BertTokenizer(vocab=tiny_bert_vocab(size))


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


