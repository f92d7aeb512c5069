"""Transformer: forward/backward, reference-stream properties, gamma, strict checkpoint keys."""

from __future__ import annotations

import math

import torch

from crispedit.mgt.attention import AttentionCapture, reference_bias
from crispedit.mgt.transformer import build_transformer


def _inputs(cfg, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = cfg.model.transformer
    ids = torch.randint(0, t.vocab_size, (b, 8, 8), generator=g)
    ref = torch.randint(0, t.codebook_size, (b, 8, 8), generator=g)
    hidden = torch.randn(b, cfg.model.text_max_length, t.joint_attention_dim, generator=g)
    pooled = torch.randn(b, t.pooled_projection_dim, generator=g)
    micro = torch.tensor([[16.0, 16.0, 0.0, 0.0, 6.0]] * b)
    timestep = torch.rand(b, generator=g)
    return ids, hidden, pooled, micro, timestep, ref


def test_forward_backward_reaches_every_parameter(tiny_config):
    torch.manual_seed(0)
    model = build_transformer(tiny_config.model.transformer).train()
    ids, hidden, pooled, micro, t, ref = _inputs(tiny_config)
    logits = model(ids, hidden, pooled, micro, t, reference_ids=ref, reference_strength=1.1)
    assert logits.shape == (2, tiny_config.model.transformer.codebook_size, 8, 8)
    logits.logsumexp(1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_gamma_one_is_exactly_no_bias_and_not_stale(tiny_config):
    torch.manual_seed(0)
    model = build_transformer(tiny_config.model.transformer).eval()
    args = _inputs(tiny_config)
    with torch.no_grad():
        plain = model(*args[:5], reference_ids=args[5], reference_strength=1.0)
        biased = model(*args[:5], reference_ids=args[5], reference_strength=1.5)
        again = model(*args[:5], reference_ids=args[5], reference_strength=1.0)
    assert not torch.allclose(plain, biased)  # the bias does something
    assert torch.equal(plain, again)  # upstream kept the stale gamma here
    assert reference_bias(10, 5, 1.0, torch.float32, torch.device("cpu")) is None


def test_log_gamma_bias_equals_scaling_attention_weights():
    """softmax(s + M) with M = log gamma on ref<->other equals reweighting exp(s) by gamma."""
    torch.manual_seed(0)
    n_main, n_ref, gamma = 5, 3, 1.7
    q, k, v = (torch.randn(1, 2, n_main + n_ref, 4, dtype=torch.float64) for _ in range(3))
    bias = reference_bias(n_main, n_ref, gamma, torch.float64, torch.device("cpu"))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    w = torch.exp(q @ k.transpose(-1, -2) / 2.0)
    scale = torch.ones(n_main + n_ref, n_main + n_ref, dtype=torch.float64)
    scale[n_main:, :n_main] = gamma
    scale[:n_main, n_main:] = gamma
    w = w * scale
    expected = (w / w.sum(-1, keepdim=True)) @ v
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


def test_reference_stream_changes_prediction_and_shares_weights(tiny_config):
    torch.manual_seed(0)
    model = build_transformer(tiny_config.model.transformer).eval()
    ids, hidden, pooled, micro, t, ref = _inputs(tiny_config)
    n_params = sum(p.numel() for p in model.parameters())
    expected = sum(math.prod(shape) for shape in _released_shapes(tiny_config.model.transformer).values())
    with torch.no_grad():
        a = model(ids, hidden, pooled, micro, t, reference_ids=ref)
        b = model(ids, hidden, pooled, micro, t, reference_ids=ref.flip(-1))
        c = model(ids, hidden, pooled, micro, t, reference_ids=None)
    assert not torch.allclose(a, b) and not torch.allclose(a, c)
    # no parameter exists for the reference stream: the count is the released text-to-image layout's
    assert n_params == expected


def test_capture_is_batch_aware(tiny_config):
    """Capturing the conditional half only gives one map per image, from that image's row."""
    torch.manual_seed(0)
    model = build_transformer(tiny_config.model.transformer).eval()
    ids, hidden, pooled, micro, t, ref = _inputs(tiny_config, b=2)
    both = AttentionCapture({1, 2})
    second = AttentionCapture({1, 2}, batch_slice=slice(1, 2))
    with torch.no_grad():
        model(ids, hidden, pooled, micro, t, reference_ids=ref, capture=both)
        model(ids, hidden, pooled, micro, t, reference_ids=ref, capture=second)
    assert both.count == 2 * 2  # two blocks x two heads
    assert both.consolidated().shape == (2, 16)
    torch.testing.assert_close(second.consolidated()[0], both.consolidated()[1])


# Parameter names and shapes of the released Meissonic/EditMGT Transformer2DModel (viiika/Meissonic
# src/transformer.py; weichow23/EditMGT src/transformer.py with connector_type='linear'), written
# out here from the layer definitions, independently of crispedit's module tree.
def _released_shapes(t) -> dict[str, tuple[int, ...]]:
    d, j, p, hd = t.num_attention_heads * t.attention_head_dim, t.joint_attention_dim, t.pooled_projection_dim, t.attention_head_dim
    m = 5 * t.micro_cond_encode_dim

    def linear(name, out_f, in_f, bias=True):
        return {f"{name}.weight": (out_f, in_f), **({f"{name}.bias": (out_f,)} if bias else {})}

    shapes = {
        **linear("time_text_embed.timestep_embedder.linear_1", d, 256), **linear("time_text_embed.timestep_embedder.linear_2", d, d),
        **linear("time_text_embed.text_embedder.linear_1", d, d), **linear("time_text_embed.text_embedder.linear_2", d, d),
        **linear("context_embedder", d, d), **linear("connector.projector", d, j),
        "embed.embeddings.weight": (t.vocab_size, d), "embed.layer_norm.weight": (d,), "embed.conv.weight": (d, d, 1, 1),
        "mlm_layer.conv1.weight": (d, d, 1, 1), "mlm_layer.layer_norm.weight": (d,),
        "mlm_layer.conv2.weight": (t.codebook_size, d, 1, 1),
        **linear("cond_embed.linear_1", d, m + p, bias=False), **linear("cond_embed.linear_2", d, d, bias=False),
        "encoder_proj_layer_norm.weight": (d,), "project_to_hidden_norm.weight": (d,),
        **linear("project_to_hidden", d, d, bias=False), "project_from_hidden_norm.weight": (d,),
        **linear("project_from_hidden", d, d, bias=False),
        "down_block.downsample.norm.weight": (d,), "down_block.downsample.conv.weight": (d, d, 2, 2),
        "up_block.upsample.norm.weight": (d,), "up_block.upsample.conv.weight": (d, d, 2, 2),
    }
    for i in range(t.num_layers):
        b = f"transformer_blocks.{i}."
        shapes |= linear(b + "norm1.linear", 6 * d, d) | linear(b + "norm1_context.linear", 6 * d, d)
        shapes |= {b + f"attn.{n}.weight": (hd,) for n in ("norm_q", "norm_k", "norm_added_q", "norm_added_k")}
        for n in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"):
            shapes |= linear(b + "attn." + n, d, d)
        for ff in ("ff", "ff_context"):
            shapes |= linear(b + ff + ".net.0.proj", 4 * d, d) | linear(b + ff + ".net.2", d, 4 * d)
    for i in range(t.num_single_layers):
        b = f"single_transformer_blocks.{i}."
        shapes |= linear(b + "norm.linear", 3 * d, d) | linear(b + "proj_mlp", 4 * d, d) | linear(b + "proj_out", d, 5 * d)
        shapes |= {b + "attn.norm_q.weight": (hd,), b + "attn.norm_k.weight": (hd,)}
        for n in ("to_q", "to_k", "to_v"):
            shapes |= linear(b + "attn." + n, d, d)
    return shapes


def test_released_layout_loads_strictly(tiny_config):
    t = tiny_config.model.transformer
    model = build_transformer(t)
    expected = _released_shapes(t)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    # A "released" checkpoint: every key, fresh values of the right shapes.
    torch.manual_seed(1)
    released = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    result = model.load_state_dict(released, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.state_dict()["single_transformer_blocks.1.attn.to_q.weight"],
                       released["single_transformer_blocks.1.attn.to_q.weight"])
    bad = dict(released)
    bad["transformer_blocks.0.attn.extra.weight"] = torch.zeros(1)
    try:
        model.load_state_dict(bad, strict=True)
    except RuntimeError:
        pass
    else:
        raise AssertionError("strict load accepted an unknown key")
