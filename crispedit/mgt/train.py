"""The EditMGT training loop: masked-token cross-entropy on the target given the source.

One optimizer step = `gradient_accumulation_steps` micro-batches of `batch_size` pairs.
All randomness of a micro-batch (mask ratios, masked positions, CFG dropout, crop window)
comes from generators seeded by (seed, data position), so a run stopped after any
checkpoint and resumed reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import (
    TrainProgress,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from .components import build_text, build_transformer_from_config, build_vq
from .config import MGTConfig
from .data import PairBatch, PairStream
from .masking import mask_tokens, masked_cross_entropy, sample_mask_ratios
from .text import TextConditioner
from .tokenizer import VQTokenizer

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # mean loss of each optimizer step
    progress: TrainProgress = field(default_factory=TrainProgress)
    output_dir: Path = Path(".")
    tokens_per_second: float = 0.0


def _generator(seed: int, position: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + position) % (2**63 - 1))
    return g


def compute_loss(model: torch.nn.Module, vq: VQTokenizer, text: TextConditioner, batch: PairBatch, cfg: MGTConfig,
                 generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, int]:
    """Loss of one micro-batch and the number of target tokens it covered."""
    tcfg, mcfg = cfg.train, cfg.model.transformer
    b = batch.source.shape[0]
    source_ids = vq.encode(batch.source.to(device))
    target_ids = vq.encode(batch.target.to(device))
    cond = text.encode(batch.instructions)

    # Classifier-free dropout, per sample and independent for the two conditions. The text
    # is replaced by the empty prompt's real encoding (what the unconditional branch of the
    # sampler feeds), the image condition by an all-[MASK] reference stream.
    drop_text = torch.rand(b, generator=generator, device=device) < tcfg.text_drop_prob
    drop_image = torch.rand(b, generator=generator, device=device) < tcfg.image_drop_prob
    cond = cond.index(drop_text, text.empty(cfg.sample.negative_prompt))
    reference_ids = torch.where(drop_image[:, None, None], torch.full_like(source_ids, mcfg.mask_token_id), source_ids)

    ratios = sample_mask_ratios(b, generator, tcfg.min_masking_rate, device)
    masked_ids, masked = mask_tokens(target_ids, ratios, mcfg.mask_token_id, generator)
    logits = model(
        masked_ids, cond.hidden.to(device), cond.pooled.to(device), batch.micro_conds.to(device), ratios,
        reference_ids=reference_ids, reference_strength=1.0,
    )
    return masked_cross_entropy(logits, target_ids, masked), target_ids.numel()


class Trainer:
    def __init__(self, cfg: MGTConfig, data_paths: list[str | Path], output_dir: str | Path | None = None) -> None:
        from accelerate import Accelerator
        from diffusers.optimization import get_scheduler

        self.cfg = cfg
        tcfg = cfg.train
        self.output_dir = Path(output_dir or tcfg.output_dir)
        self.accelerator = Accelerator(
            mixed_precision=tcfg.mixed_precision, gradient_accumulation_steps=tcfg.gradient_accumulation_steps
        )
        device = self.accelerator.device
        self.vq = build_vq(cfg.model)
        self.vq.vq.to(device)
        self.text = build_text(cfg.model).to(device)
        torch.manual_seed(tcfg.seed)
        model = build_transformer_from_config(cfg.model)
        if tcfg.lora_rank > 0:
            from .lora import apply_lora

            apply_lora(model, tcfg.lora_rank, tcfg.lora_alpha, tuple(tcfg.lora_targets))
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=tcfg.learning_rate, betas=(tcfg.adam_beta1, tcfg.adam_beta2),
                                      weight_decay=tcfg.weight_decay)
        scheduler = get_scheduler(tcfg.lr_scheduler, optimizer, num_warmup_steps=tcfg.lr_warmup_steps,
                                  num_training_steps=tcfg.max_steps)
        self.ema = None
        if tcfg.use_ema:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(params, decay=tcfg.ema_decay)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        if self.ema is not None:
            self.ema.to(device)
        datasets = data_paths or [d.path for d in tcfg.datasets]
        if not datasets:
            raise ValueError("no training data: pass DATA paths or set train.datasets in the config")
        ratios = None
        if tcfg.datasets and not data_paths:
            ratios = [d.ratio for d in tcfg.datasets]
        elif tcfg.datasets:
            by_path = {str(Path(d.path)): d.ratio for d in tcfg.datasets}
            ratios = [by_path.get(str(Path(p)), 1.0) for p in datasets]
        self.stream = PairStream(datasets, ratios, cfg.model.resolution, tcfg.seed, tcfg.random_crop)
        self.progress = TrainProgress()

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def resume(self, path: Path | None = None) -> bool:
        path = path or latest_checkpoint(self.output_dir)
        if path is None:
            return False
        self.progress = load_checkpoint(path, self.unwrapped, self.optimizer, self.scheduler, self.ema)
        log.info("resumed from %s at step %d", path, self.progress.step)
        return True

    def save(self) -> Path:
        self.accelerator.wait_for_everyone()
        path = checkpoint_dir(self.output_dir, self.progress.step)
        if self.accelerator.is_main_process:
            save_checkpoint(path, self.unwrapped, self.optimizer, self.scheduler, self.ema, self.progress, self.cfg)
            prune_checkpoints(self.output_dir, self.cfg.train.checkpoints_total_limit)
        return path

    def train(self, max_steps: int | None = None, stop_after: int | None = None) -> TrainResult:
        """Train until `max_steps` optimizer steps; `stop_after` ends early (a simulated kill)
        right after the checkpoint of that step, leaving the run resumable."""
        tcfg = self.cfg.train
        max_steps = max_steps or tcfg.max_steps
        device = self.accelerator.device
        result = TrainResult(output_dir=self.output_dir)
        accum = tcfg.gradient_accumulation_steps
        batches = self.stream.batches(tcfg.batch_size, start=self.progress.position)
        tokens, started = 0, time.perf_counter()
        while self.progress.step < max_steps:
            step_losses = []
            for _ in range(accum):
                batch = next(batches)
                generator = _generator(tcfg.seed, batch.positions[0], device)
                with self.accelerator.accumulate(self.model):
                    with self.accelerator.autocast():
                        loss, n = compute_loss(self.model, self.vq, self.text, batch, self.cfg, generator, device)
                    self.accelerator.backward(loss)
                    if self.accelerator.sync_gradients and tcfg.max_grad_norm:
                        self.accelerator.clip_grad_norm_(self.model.parameters(), tcfg.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                step_losses.append(loss.detach().float().item())
                tokens += n
                self.progress.position = batch.positions[-1] + 1
            self.progress.step += 1
            if self.ema is not None:
                self.ema.step([p for p in self.unwrapped.parameters() if p.requires_grad])
            mean_loss = sum(step_losses) / len(step_losses)
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"loss became {mean_loss} at step {self.progress.step}")
            result.losses.append(mean_loss)
            if self.progress.step % max(1, tcfg.log_every) == 0:
                log.info("step %d loss %.4f lr %.2e", self.progress.step, mean_loss, self.scheduler.get_last_lr()[0])
            done = self.progress.step >= max_steps
            stop = stop_after is not None and self.progress.step >= stop_after
            if done or stop or self.progress.step % max(1, tcfg.checkpoint_every) == 0:
                self.save()
            if stop:
                break
        elapsed = time.perf_counter() - started
        result.tokens_per_second = tokens / elapsed if elapsed > 0 else 0.0
        result.progress = TrainProgress(self.progress.step, self.progress.position)
        return result


def train(cfg: MGTConfig, data_paths: list[str | Path], output_dir: str | Path | None = None,
          max_steps: int | None = None, resume: bool = False) -> TrainResult:
    trainer = Trainer(cfg, data_paths, output_dir)
    trainer.output_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(trainer.output_dir / "config.yaml")
    if resume:
        trainer.resume()
    return trainer.train(max_steps)
