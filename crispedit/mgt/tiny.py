"""Tiny random-init twins of every pretrained component, built from small configs.

They are the SAME classes as the real models (diffusers VQModel, CLIPTextModelWithProjection
+ CLIPTokenizer, Gemma2ForCausalLM), so tests and `--tiny` runs go through the real code paths
without downloading weights; they are built with the project's twin kit (crispedit.models.twins).
The metrics' CLIP and DINOv2 twins are the build's scorer's (crispedit.models.clip). Each factory seeds its own RNG
fork, so every process (trainer, `crispedit edit`, `crispedit eval`) rebuilds identical
weights from the config alone.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache

from crispedit.models.twins import clip_tokenizer_from, seeded, unused_tokens, write_tiny_clip_vocab

# Characters the tiny tokenizers know; everything else maps to unknown / is dropped.
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")


@lru_cache(maxsize=1)
def _clip_vocab_dir() -> str:
    """A character-level CLIP BPE vocabulary (the kit's letters and symbols, no words), written once per process."""
    return str(write_tiny_clip_vocab(tempfile.mkdtemp(prefix="crispedit-tiny-clip-"), words=(), symbols="0123456789?'-"))


def tiny_clip_tokenizer(max_length: int = 16):
    return clip_tokenizer_from(_clip_vocab_dir(), max_length)


def tiny_clip_text_model(projection_dim: int, seed: int, max_length: int = 16):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tiny_clip_tokenizer(max_length)), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=max(max_length, 16), projection_dim=projection_dim,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    with seeded(seed):
        return CLIPTextModelWithProjection(config).eval()


def tiny_llm_tokenizer(max_length: int = 16, vocab_size: int | None = None):
    """A fast WordPiece tokenizer over characters: it has offsets, like Gemma's tokenizer,
    so keyword rows are found the same way for the tiny and the real LLM. ``vocab_size`` pads it
    with unused tokens (Gemma-2's 256000, for full-size smoke runs)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for ch in _CHARS:
        vocab[ch] = len(vocab)
        vocab["##" + ch] = len(vocab)
    for token in unused_tokens(len(vocab), vocab_size):
        vocab[token] = len(vocab)
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>", max_input_chars_per_word=100))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=max_length, padding_side="right",
    )


def tiny_llm(hidden_size: int, seed: int):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        vocab_size=4 + 2 * len(_CHARS), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
        max_position_embeddings=64, sliding_window=32, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    with seeded(seed):
        return Gemma2ForCausalLM(config).eval()


def tiny_vq(codebook_size: int, seed: int):
    """Two encoder blocks: 2x down, so a 16 px image gives an 8x8 token map."""
    from diffusers import VQModel

    with seeded(seed):
        return VQModel(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, num_vq_embeddings=codebook_size,
            norm_num_groups=4, vq_embed_dim=4, lookup_from_codebook=True, mid_block_add_attention=False,
        ).eval()
