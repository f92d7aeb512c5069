"""Emu Edit task embeddings and task inversion."""

from __future__ import annotations

import pytest
import torch

from crispedit.mgt.checkpoint import latest_checkpoint
from crispedit.mgt.config import MGTConfig
from crispedit.mgt.pipeline import EditPipeline
from crispedit.mgt.train import TaskInversion, Trainer, compute_loss, inversion_config
from crispedit.mgt.transformer import build_transformer
from tests.mgt.conftest import write_crispedit_shard

TASKS = ("tone", "color", "geometry")  # one per edit of conftest's three instructions


def _inputs(cfg, b=3):
    g = torch.Generator().manual_seed(0)
    t = cfg.model.transformer
    return (torch.randint(0, t.vocab_size, (b, 8, 8), generator=g),
            torch.randn(b, cfg.model.text_max_length, t.joint_attention_dim, generator=g),
            torch.randn(b, t.pooled_projection_dim, generator=g), torch.tensor([[16.0, 16.0, 0.0, 0.0, 6.0]] * b),
            torch.rand(b, generator=g)), torch.randint(0, t.codebook_size, (b, 8, 8), generator=g)


def test_task_vectors_add_to_the_conditioning(tiny_config):
    torch.manual_seed(0)
    plain = build_transformer(tiny_config.model.transformer).eval()
    torch.manual_seed(0)
    tasked = build_transformer(tiny_config.model.transformer, num_tasks=3).eval()
    assert set(tasked.state_dict()) == set(plain.state_dict()) | {"task_embed.weight"}
    args, ref = _inputs(tiny_config)
    ids = torch.tensor([0, 1, -1])
    with torch.no_grad():
        base = plain(*args, reference_ids=ref)
        # zero-initialised rows: exactly the task-free model until training moves them
        assert torch.equal(tasked(*args, reference_ids=ref, task_ids=ids), base)
        tasked.task_embed.weight[1] = torch.randn(tasked.task_embed.weight.shape[1])
        out = tasked(*args, reference_ids=ref, task_ids=ids)
    assert torch.equal(out[0], base[0]) and torch.equal(out[2], base[2])  # task 0 (still zero) and no task
    assert not torch.allclose(out[1], base[1])


def _train_with_tasks(tiny_config, data, out, steps=3):
    cfg = tiny_config
    cfg.model.task_embeddings = True
    cfg.train.checkpoint_every = 10_000
    trainer = Trainer(cfg, [data], out)
    result = trainer.train(max_steps=steps)
    return trainer, result


def test_task_embedding_training_learns_a_vector_per_task(tiny_config, tmp_path):
    data = write_crispedit_shard(tmp_path / "ds", 6, tasks=TASKS)
    trainer, _ = _train_with_tasks(tiny_config, data, tmp_path / "run")
    assert trainer.cfg.model.tasks == tuple(sorted(TASKS))  # the vocabulary comes from the shards
    rows = trainer.unwrapped.task_embed.weight.detach()
    assert (rows.abs().sum(dim=1) > 0).all()  # every task seen in training has moved off zero
    ckpt = latest_checkpoint(tmp_path / "run")
    assert MGTConfig.load(ckpt / "config.yaml").model.tasks == tuple(sorted(TASKS))  # stored with the weights
    pipe = EditPipeline.from_checkpoint(ckpt)
    assert pipe.tasks == tuple(sorted(TASKS))
    torch.testing.assert_close(pipe.transformer.task_embed.weight, rows)


def _fixed_loss(trainer: Trainer, batches: int = 3) -> float:
    model = trainer.unwrapped.eval()
    gen = trainer.loader.batches(0)
    losses = []
    with torch.no_grad():
        for i, batch in zip(range(batches), gen):
            g = torch.Generator().manual_seed(100 + i)
            losses.append(compute_loss(model, trainer.vq, trainer.text, batch, trainer.cfg, g, torch.device("cpu"),
                                       trainer.task_ids(batch))[0].item())
    gen.close()
    model.train()
    return sum(losses) / len(losses)


@pytest.mark.slow
def test_task_inversion_trains_only_the_new_vector(tiny_config, tmp_path):
    data = write_crispedit_shard(tmp_path / "ds", 6, tasks=TASKS)
    base_trainer, _ = _train_with_tasks(tiny_config, data, tmp_path / "base")
    base_ckpt = latest_checkpoint(tmp_path / "base")
    base_state = {k: v.clone() for k, v in base_trainer.unwrapped.state_dict().items()}
    n = len(TASKS)

    new = write_crispedit_shard(tmp_path / "new", 4, seed=3)  # a few examples of the new task
    cfg = inversion_config(base_ckpt, "sepia")
    assert cfg.model.tasks == tuple(sorted(TASKS)) + ("sepia",)
    cfg.train.learning_rate, cfg.train.checkpoint_every, cfg.train.random_crop = 0.05, 10_000, False
    inv = Trainer(cfg, [new], tmp_path / "inv", invert=TaskInversion("sepia", base_ckpt))
    trainable = [name for name, p in inv.unwrapped.named_parameters() if p.requires_grad]
    assert trainable == ["task_embed.inverted"]
    before = _fixed_loss(inv)
    inv.train(max_steps=25)
    after = _fixed_loss(inv)
    print(f"task inversion: fixed-mask loss {before:.4f} -> {after:.4f}")
    assert after < before - 0.01

    state = inv.unwrapped.state_dict()
    assert set(state) == set(base_state)
    for key, value in base_state.items():
        if key != "task_embed.weight":
            assert torch.equal(state[key], value), key  # bit-identical
    assert torch.equal(state["task_embed.weight"][:n], base_state["task_embed.weight"])
    assert state["task_embed.weight"].shape[0] == n + 1 and state["task_embed.weight"][n].abs().sum() > 0

    # the result loads like any checkpoint, and the new task is usable by name
    pipe = EditPipeline.from_checkpoint(tmp_path / "inv")
    assert pipe.tasks[-1] == "sepia"
    torch.testing.assert_close(pipe.transformer.task_embed.weight, state["task_embed.weight"])
