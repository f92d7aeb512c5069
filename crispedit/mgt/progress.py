"""What a training run shows and records: a rich progress bar, log lines, accelerate trackers.

The bar (step, loss, learning rate, tokens per second, epoch) is for a person at a terminal;
the log line every `log_every` steps is for files and CI; the trackers (TensorBoard when it is
installed, or whatever `train.report_to` names) get loss, lr and throughput at every step.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .config import MGTConfig

log = logging.getLogger(__name__)


def _flat_hparams(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Trackers take scalar hyper-parameters only: nested keys dotted, lists as text."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat_hparams(value, name + "."))
        elif isinstance(value, (int, float, str, bool)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


class TrainReporter:
    def __init__(self, accelerator: Accelerator, cfg: MGTConfig, first_step: int, max_steps: int, show: bool) -> None:
        self.accelerator = accelerator
        self.log_every = max(1, cfg.train.log_every)
        self.trackers = bool(accelerator.log_with)
        if self.trackers:
            accelerator.init_trackers(cfg.name, config=_flat_hparams(cfg.to_dict()))
        self.bar = None
        if show and accelerator.is_main_process:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  "
                           "{task.fields[tps]:,.0f} tok/s  epoch {task.fields[epoch]}"),
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=max_steps, completed=first_step, loss=float("nan"), lr=0.0,
                                          tps=0.0, epoch=0)

    def step(self, step: int, loss: float, lr: float, tokens_per_second: float, epoch: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=loss, lr=lr, tps=tokens_per_second, epoch=epoch)
        if self.trackers:
            self.accelerator.log({"loss": loss, "lr": lr, "tokens_per_second": tokens_per_second, "epoch": epoch},
                                 step=step)
        if step % self.log_every == 0:
            log.info("step %d loss %.4f lr %.2e %.0f tok/s epoch %d", step, loss, lr, tokens_per_second, epoch)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        if self.trackers:
            self.accelerator.end_training()
            self.trackers = False
