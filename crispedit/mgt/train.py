"""The EditMGT training loop: masked-token cross-entropy on the target given the source.

One optimizer step = `gradient_accumulation_steps` micro-batches of `batch_size` pairs.
All randomness of a micro-batch (mask ratios, masked positions, CFG dropout, crop window)
comes from generators seeded by (seed, data position), and the loader's order is a function
of (seed, batch index) (epochs.py), so a run stopped after any checkpoint and resumed
reproduces the uninterrupted run exactly, whatever the number of loader workers.

Task inversion (Emu Edit) is the same loop with every weight frozen except one new task
vector: see `TaskInversion`.
"""

from __future__ import annotations

import copy
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
    read_progress,
    save_checkpoint,
)
from .components import build_text, build_transformer_from_config, build_vq, load_trained_transformer
from .config import MGTConfig
from .data import PairBatch, to_unit
from .loader import PairLoader
from .masking import mask_tokens, masked_cross_entropy, sample_mask_ratios
from .pipeline import load_editor_config
from .progress import TrainReporter
from .text import TextConditioner
from .tokenizer import VQTokenizer

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # mean loss of each optimizer step
    progress: TrainProgress = field(default_factory=TrainProgress)
    output_dir: Path = Path(".")
    tokens_per_second: float = 0.0


@dataclass
class TaskInversion:
    """Learn one new task vector from a few examples; everything else stays frozen (Emu Edit).

    `checkpoint` is the model to extend (a checkpoint dir, an output dir or a released EditMGT
    dir); every sample of the data counts as task `name`, whatever its `task` column says.
    """

    name: str
    checkpoint: Path


def _generator(seed: int, position: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + position) % (2**63 - 1))
    return g


def compute_loss(model: torch.nn.Module, vq: VQTokenizer, text: TextConditioner, batch: PairBatch, cfg: MGTConfig,
                 generator: torch.Generator, device: torch.device, task_ids: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, int]:
    """Loss of one micro-batch and the number of target tokens it covered."""
    tcfg, mcfg = cfg.train, cfg.model.transformer
    b = len(batch)
    source_ids = vq.encode(to_unit(batch.source, device))
    target_ids = vq.encode(to_unit(batch.target, device))
    cond = text.encode(batch.instructions)

    # Classifier-free dropout, per sample and independent for the two conditions. The text
    # is replaced by the empty prompt's real encoding (what the unconditional branch of the
    # sampler feeds), the image condition by an all-[MASK] reference stream. The task vector
    # is kept: the sampler gives both guidance branches the same task.
    drop_text = torch.rand(b, generator=generator, device=device) < tcfg.text_drop_prob
    drop_image = torch.rand(b, generator=generator, device=device) < tcfg.image_drop_prob
    cond = cond.index(drop_text, text.empty(cfg.sample.negative_prompt))
    reference_ids = torch.where(drop_image[:, None, None], torch.full_like(source_ids, mcfg.mask_token_id), source_ids)

    ratios = sample_mask_ratios(b, generator, tcfg.min_masking_rate, device)
    masked_ids, masked = mask_tokens(target_ids, ratios, mcfg.mask_token_id, generator)
    # ratio: the model embeds r*1000; ratio_x1000 (upstream training): it embeds r*10^6.
    timestep = ratios * 1000 if tcfg.timestep_mode == "ratio_x1000" else ratios
    logits = model(
        masked_ids, cond.hidden.to(device), cond.pooled.to(device), batch.micro_conds.to(device), timestep,
        reference_ids=reference_ids, reference_strength=1.0, task_ids=task_ids,
    )
    return masked_cross_entropy(logits, target_ids, masked), target_ids.numel()


def inversion_config(checkpoint: str | Path, name: str) -> MGTConfig:
    """The base checkpoint's config with `name` appended to the task vocabulary and the
    settings inversion needs: no EMA, no LoRA, no dropout, no weight decay. The new checkpoint
    holds the whole transformer, so it needs no `init_transformer`."""
    base = load_editor_config(checkpoint)[0]
    if base.model.task_embeddings and name in base.model.tasks:
        raise ValueError(f"task {name!r} already exists in this checkpoint ({', '.join(base.model.tasks)})")
    cfg = copy.deepcopy(base)
    cfg.model.tasks = (tuple(base.model.tasks) if base.model.task_embeddings else ()) + (name,)
    cfg.model.task_embeddings = True
    cfg.model.init_transformer = None
    t = cfg.train
    t.use_ema, t.lora_rank, t.text_drop_prob, t.image_drop_prob, t.weight_decay = False, 0, 0.0, 0.0, 0.0
    t.datasets = []
    return cfg


class Trainer:
    def __init__(self, cfg: MGTConfig, data_paths: list[str | Path], output_dir: str | Path | None = None,
                 invert: TaskInversion | None = None, show_progress: bool = False) -> None:
        from accelerate import Accelerator
        from diffusers.optimization import get_scheduler

        if cfg.train.timestep_mode not in ("ratio", "ratio_x1000"):
            raise ValueError(f"train.timestep_mode must be 'ratio' or 'ratio_x1000', got {cfg.train.timestep_mode!r}")
        self.invert = invert
        self.cfg = cfg
        tcfg = cfg.train
        self.output_dir = Path(output_dir or tcfg.output_dir)
        self.accelerator = Accelerator(
            mixed_precision=tcfg.mixed_precision, gradient_accumulation_steps=tcfg.gradient_accumulation_steps,
            log_with=_trackers(tcfg.report_to), project_dir=str(self.output_dir),
        )
        device = self.accelerator.device
        self.loader = self._build_loader(data_paths)
        if cfg.model.task_embeddings and not cfg.model.tasks:
            cfg.model.tasks = tuple(sorted(self.loader.task_values()))
            if not cfg.model.tasks:
                raise ValueError("model.task_embeddings is on but the data has no task values; "
                                 "fill the `task` column or list model.tasks")
            log.info("task vocabulary from the data: %s", ", ".join(cfg.model.tasks))
        self._unknown_tasks: set[str] = set()
        self.vq = build_vq(cfg.model)
        self.vq.vq.to(device)
        self.text = build_text(cfg.model).to(device)
        torch.manual_seed(tcfg.seed)
        model = self._build_model()
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
        self.progress = TrainProgress(loader=self._loader_settings())
        self.show_progress = show_progress

    def _build_loader(self, data_paths: list[str | Path]) -> PairLoader:
        tcfg = self.cfg.train
        datasets = list(data_paths) or [d.path for d in tcfg.datasets]
        if not datasets:
            raise ValueError("no training data: pass DATA paths or set train.datasets in the config")
        ratios = None
        if tcfg.datasets and not data_paths:
            ratios = [d.ratio for d in tcfg.datasets]
        elif tcfg.datasets:
            by_path = {str(Path(d.path)): d.ratio for d in tcfg.datasets}
            ratios = [by_path.get(str(Path(p)), 1.0) for p in datasets]
        self.ratios = ratios or [1.0] * len(datasets)
        return PairLoader(datasets, self.ratios, self.cfg.model.resolution, tcfg.seed, tcfg.batch_size,
                          streams=tcfg.loader_streams, mix=tcfg.shuffle_row_groups, num_workers=tcfg.num_workers,
                          random_crop=tcfg.random_crop)

    def _loader_settings(self) -> dict[str, object]:
        t = self.cfg.train
        return {"seed": t.seed, "batch_size": t.batch_size, "streams": t.loader_streams, "mix": t.shuffle_row_groups,
                "ratios": list(self.ratios), "rows": [len(ix) for ix in self.loader.indexes]}

    def _build_model(self) -> torch.nn.Module:
        cfg = self.cfg
        if self.invert is None:
            model = build_transformer_from_config(cfg.model)
            if cfg.train.lora_rank > 0:
                from .lora import apply_lora

                apply_lora(model, cfg.train.lora_rank, cfg.train.lora_alpha, tuple(cfg.train.lora_targets))
            return model
        # Task inversion: the base model's weights (EMA and LoRA folded in), one more task row
        # (zeros: the run starts from the task-free model), and only that row trainable.
        base, base_dir, released = load_editor_config(self.invert.checkpoint)
        if released:
            base_model = build_transformer_from_config(base.model)
        else:
            base_model = load_trained_transformer(base_dir, base.model, _lora_of(base))
        state = base_model.state_dict()
        model = build_transformer_from_config(cfg.model, init=None)
        rows = model.task_embed.weight.detach().clone()
        if "task_embed.weight" in state:
            rows[: state["task_embed.weight"].shape[0]] = state["task_embed.weight"]
        state["task_embed.weight"] = rows
        model.load_state_dict(state, strict=True)
        model.requires_grad_(False)
        model.task_embed.begin_inversion()
        return model

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def task_ids(self, batch: PairBatch) -> torch.Tensor | None:
        """Task index per sample; -1 (no task vector) for samples without a known task."""
        mcfg = self.cfg.model
        if not mcfg.task_embeddings:
            return None
        if self.invert is not None:
            return torch.full((len(batch),), len(mcfg.tasks) - 1, dtype=torch.long)
        ids = []
        for task in batch.tasks:
            if task in mcfg.tasks:
                ids.append(mcfg.tasks.index(task))
            else:
                if task is not None and task not in self._unknown_tasks:
                    self._unknown_tasks.add(task)
                    log.warning("task %r is not in the vocabulary: its samples train without a task vector", task)
                ids.append(-1)
        return torch.tensor(ids, dtype=torch.long)

    def resume(self, path: Path | None = None) -> bool:
        path = path or latest_checkpoint(self.output_dir)
        if path is None:
            return False
        saved = read_progress(path).loader
        current = self._loader_settings()
        changed = {k: (saved[k], current[k]) for k in current if k in saved and saved[k] != current[k]}
        if changed:
            detail = "; ".join(f"{k}: checkpoint {a}, now {b}" for k, (a, b) in changed.items())
            raise ValueError(f"{path}: the data order depends on settings that changed ({detail}); "
                             "resuming would not continue the same sample stream")
        self.progress = load_checkpoint(path, self.unwrapped, self.optimizer, self.scheduler, self.ema)
        self.progress.loader = current
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.progress.step, self.progress.epoch,
                 self.progress.batches)
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
        batches = self.loader.batches(start_batch=self.progress.batches)
        reporter = TrainReporter(self.accelerator, self.cfg, self.progress.step, max_steps, self.show_progress)
        tokens, started = 0, time.perf_counter()
        try:
            while self.progress.step < max_steps:
                step_losses = []
                for _ in range(accum):
                    batch = next(batches)
                    generator = _generator(tcfg.seed, batch.positions[0], device)
                    task_ids = self.task_ids(batch)
                    with self.accelerator.accumulate(self.model):
                        with self.accelerator.autocast():
                            loss, n = compute_loss(self.model, self.vq, self.text, batch, self.cfg, generator, device,
                                                   None if task_ids is None else task_ids.to(device))
                        self.accelerator.backward(loss)
                        if self.accelerator.sync_gradients and tcfg.max_grad_norm:
                            self.accelerator.clip_grad_norm_(self.model.parameters(), tcfg.max_grad_norm)
                        self.optimizer.step()
                        self.scheduler.step()
                        self.optimizer.zero_grad(set_to_none=True)
                    step_losses.append(loss.detach().float().item())
                    tokens += n
                    self.progress.batches = batch.index + 1
                    self.progress.position = self.progress.batches * tcfg.batch_size
                    self.progress.epoch = batch.epoch
                self.progress.step += 1
                if self.ema is not None:
                    self.ema.step([p for p in self.unwrapped.parameters() if p.requires_grad])
                mean_loss = sum(step_losses) / len(step_losses)
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(f"loss became {mean_loss} at step {self.progress.step}")
                result.losses.append(mean_loss)
                elapsed = time.perf_counter() - started
                reporter.step(self.progress.step, mean_loss, self.scheduler.get_last_lr()[0],
                              tokens / elapsed if elapsed > 0 else 0.0, self.progress.epoch)
                done = self.progress.step >= max_steps
                stop = stop_after is not None and self.progress.step >= stop_after
                if done or stop or self.progress.step % max(1, tcfg.checkpoint_every) == 0:
                    self.save()
                if stop:
                    break
        finally:
            batches.close()
            reporter.close()
        elapsed = time.perf_counter() - started
        result.tokens_per_second = tokens / elapsed if elapsed > 0 else 0.0
        result.progress = copy.deepcopy(self.progress)
        return result


def _lora_of(cfg: MGTConfig) -> tuple[int, float, tuple[str, ...]] | None:
    t = cfg.train
    return (t.lora_rank, t.lora_alpha, tuple(t.lora_targets)) if t.lora_rank > 0 else None


def _trackers(report_to: str) -> list[str] | None:
    """accelerate's `log_with`: TensorBoard when installed and asked for ("auto"), nothing otherwise."""
    if report_to == "none":
        return None
    if report_to == "auto":
        from accelerate.utils import is_tensorboard_available

        return ["tensorboard"] if is_tensorboard_available() else None
    return [report_to]


def train(cfg: MGTConfig, data_paths: list[str | Path], output_dir: str | Path | None = None,
          max_steps: int | None = None, resume: bool = False, invert: TaskInversion | None = None,
          show_progress: bool = False) -> TrainResult:
    trainer = Trainer(cfg, data_paths, output_dir, invert=invert, show_progress=show_progress)
    trainer.output_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(trainer.output_dir / "config.yaml")
    if resume:
        trainer.resume()
    return trainer.train(max_steps)
