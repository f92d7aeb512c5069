"""Training: the tiny model overfits a handful of pairs; a killed-and-resumed run matches."""

from __future__ import annotations

import pytest
import torch

from crispedit.mgt.train import Trainer, compute_loss


def _eval_loss(trainer: Trainer) -> float:
    """Loss on fixed batches with fixed masks (eval mode, no dropout): comparable across steps."""
    cfg = trainer.cfg
    saved = (cfg.train.text_drop_prob, cfg.train.image_drop_prob)
    cfg.train.text_drop_prob = cfg.train.image_drop_prob = 0.0
    model = trainer.unwrapped.eval()
    total = []
    batches = trainer.loader.batches(0)
    with torch.no_grad():
        for i, batch in zip(range(4), batches):
            g = torch.Generator().manual_seed(1000 + i)
            total.append(compute_loss(model, trainer.vq, trainer.text, batch, cfg, g, torch.device("cpu"),
                                      trainer.task_ids(batch))[0].item())
    batches.close()
    model.train()
    cfg.train.text_drop_prob, cfg.train.image_drop_prob = saved
    return sum(total) / len(total)


def _overfit(tiny_config, data_dir, out_dir, steps: int = 150) -> float:
    cfg = tiny_config
    cfg.train.text_drop_prob = cfg.train.image_drop_prob = 0.0
    cfg.train.random_crop = False
    cfg.train.checkpoint_every = 10_000
    trainer = Trainer(cfg, [data_dir], out_dir)
    before = _eval_loss(trainer)
    trainer.train(max_steps=steps)
    after = _eval_loss(trainer)
    factor = before / after
    print(f"overfit {data_dir.name}: eval loss {before:.3f} -> {after:.3f} (x{factor:.1f} lower)")
    return factor


@pytest.mark.slow
def test_tiny_model_overfits_a_handful_of_pairs(tiny_config, pairs_dir, tmp_path):
    # x6.4 with the first loader, x4.5 with the row-group loader (another sample order, and the
    # eval batches are the loader's first four, so a different eval set too)
    assert _overfit(tiny_config, pairs_dir, tmp_path) > 4.0


@pytest.mark.slow
def test_overfits_quickstart_build(quickstart_dataset, tiny_config, tmp_path):
    """Same, on a handful of pairs of the package's quickstart build (tests/conftest.py fixture)."""
    import pyarrow.parquet as pq

    from crispedit.mgt.data import discover_shards

    quickstart = quickstart_dataset
    handful = pq.read_table(discover_shards(quickstart)[0]).slice(0, 6)
    (tmp_path / "handful" / "data").mkdir(parents=True)
    pq.write_table(handful, tmp_path / "handful" / "data" / "train-00000.parquet")
    assert _overfit(tiny_config, tmp_path / "handful", tmp_path / "out") > 5.0


def _final_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.unwrapped.state_dict().items()}


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted(tiny_config, pairs_dir, tmp_path):
    cfg = tiny_config
    cfg.train.gradient_accumulation_steps = 2
    cfg.train.batch_size = 2
    cfg.train.use_ema = True
    cfg.train.ema_decay = 0.9
    cfg.train.lr_scheduler = "cosine"
    cfg.train.lr_warmup_steps = 2
    cfg.train.checkpoint_every = 3
    total, kill_at = 8, 3

    straight = Trainer(cfg, [pairs_dir], tmp_path / "straight")
    ref = straight.train(max_steps=total)

    first = Trainer(cfg, [pairs_dir], tmp_path / "killed")
    first.train(max_steps=total, stop_after=kill_at)
    del first  # the "killed" process
    second = Trainer(cfg, [pairs_dir], tmp_path / "killed")
    assert second.resume()
    assert second.progress.step == kill_at and second.progress.position == kill_at * 2 * 2
    assert second.progress.batches == kill_at * 2
    rest = second.train(max_steps=total)

    assert rest.progress.position == ref.progress.position  # same data consumed
    torch.testing.assert_close(rest.losses, ref.losses[kill_at:], rtol=0, atol=1e-6)
    a, b = _final_state(straight), _final_state(second)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)
    for x, y in zip(straight.ema.shadow_params, second.ema.shadow_params):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    assert straight.scheduler.get_last_lr() == second.scheduler.get_last_lr()


@pytest.mark.slow
def test_tensorboard_tracker_records_the_run(tiny_config, pairs_dir, tmp_path):
    """report_to: auto writes TensorBoard events when tensorboard is installed (it is optional)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config
    cfg.train.checkpoint_every = 10_000
    Trainer(cfg, [pairs_dir], tmp_path).train(max_steps=2)
    assert sorted((tmp_path / cfg.name).glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(tmp_path / cfg.name))
    acc.Reload()
    assert {"loss", "lr", "tokens_per_second"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("loss")] == [1, 2]
