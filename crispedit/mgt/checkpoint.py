"""Resumable checkpoints: weights in safetensors, small state with torch.save (weights_only loads).

Layout of OUT/checkpoints/step-NNNNNNN/:
    model.safetensors   transformer training state (LoRA keys included when LoRA is on)
    adapter/            with LoRA: the adapter in peft's format (adapter_config.json,
                        adapter_model.safetensors), loadable by peft and diffusers
    ema.safetensors     EMA shadow weights (optional), with ema.json for its counters
    optimizer.pt        optimizer state dict
    scheduler.pt        LR scheduler state dict
    rng.pt              torch CPU (and CUDA) RNG states
    state.json          step, data position (samples and batches), epoch, and the loader
                        settings the position depends on
    config.yaml         the full MGTConfig
A checkpoint is written to a temporary folder and renamed, so a crash mid-save never leaves
a half checkpoint that --resume would pick up.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from diffusers.training_utils import EMAModel

    from .config import MGTConfig

PREFIX = "step-"


@dataclass
class TrainProgress:
    step: int = 0  # optimizer steps done
    position: int = 0  # samples consumed from the data stream (= batches x batch size)
    batches: int = 0  # micro-batches consumed: the loader resumes at this global batch index
    epoch: int = 0  # epoch of the last batch consumed (for people; the loader needs only `batches`)
    # What the data order depends on besides `batches` (seed, batch size, streams, mix, ratios):
    # a resume with other values would silently see other samples, so it is refused.
    loader: dict[str, Any] = field(default_factory=dict)


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"{PREFIX}{step:07d}"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a training output dir (its latest checkpoint)."""
    path = Path(path)
    if (path / "config.yaml").exists() and (path / "model.safetensors").exists():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"{path}: not a checkpoint (model.safetensors + config.yaml) nor an output dir with checkpoints/")
    return latest


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    root = Path(output_dir) / "checkpoints"
    found = sorted(p for p in root.glob(f"{PREFIX}*") if (p / "state.json").exists()) if root.is_dir() else []
    return found[-1] if found else None


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    ema: EMAModel | None, progress: TrainProgress, config: MGTConfig) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_contiguous(model.state_dict()), str(tmp / "model.safetensors"))
    if config.train.lora_rank > 0:  # the adapter alone, in peft's format, for peft and diffusers
        from .lora import save_adapter

        t = config.train
        save_adapter(model, tmp / "adapter", t.lora_rank, t.lora_alpha, tuple(t.lora_targets))
    if ema is not None:
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        save_file(_contiguous(dict(zip(names, ema.shadow_params))), str(tmp / "ema.safetensors"))
        meta = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
        (tmp / "ema.json").write_text(json.dumps(meta))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(progress)))
    config.save(tmp / "config.yaml")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    ema: EMAModel | None) -> TrainProgress:
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if ema is not None:
        shadow = load_file(str(path / "ema.safetensors"))
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        meta = json.loads((path / "ema.json").read_text())
        meta["shadow_params"] = [shadow[n] for n in names]
        ema.load_state_dict(meta)
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return read_progress(path)


def read_progress(path: Path) -> TrainProgress:
    state = json.loads((path / "state.json").read_text())
    return TrainProgress(step=int(state["step"]), position=int(state["position"]),
                         batches=int(state.get("batches", 0)), epoch=int(state.get("epoch", 0)),
                         loader=dict(state.get("loader", {})))


def prune_checkpoints(output_dir: str | Path, keep: int | None) -> None:
    if not keep:
        return
    root = Path(output_dir) / "checkpoints"
    found = sorted(p for p in root.glob(f"{PREFIX}*") if not p.name.endswith(".tmp"))
    for old in found[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
