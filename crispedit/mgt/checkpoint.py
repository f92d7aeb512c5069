"""Resumable checkpoints: weights in safetensors, small state with torch.save (weights_only loads).

Layout of OUT/checkpoints/step-NNNNNNN/:
    model.safetensors   transformer training state (LoRA keys included when LoRA is on)
    ema.safetensors     EMA shadow weights (optional), with ema.json for its counters
    optimizer.pt        optimizer state dict
    scheduler.pt        LR scheduler state dict
    rng.pt              torch CPU (and CUDA) RNG states
    state.json          step and data position
    config.yaml         the full MGTConfig
A checkpoint is written to a temporary folder and renamed, so a crash mid-save never leaves
a half checkpoint that --resume would pick up.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PREFIX = "step-"


@dataclass
class TrainProgress:
    step: int = 0  # optimizer steps done
    position: int = 0  # samples consumed from the data stream


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"{PREFIX}{step:07d}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    root = Path(output_dir) / "checkpoints"
    found = sorted(p for p in root.glob(f"{PREFIX}*") if (p / "state.json").exists()) if root.is_dir() else []
    return found[-1] if found else None


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler, ema, progress: TrainProgress,
                    config) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_contiguous(model.state_dict()), str(tmp / "model.safetensors"))
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
    (tmp / "state.json").write_text(json.dumps({"step": progress.step, "position": progress.position}))
    config.save(tmp / "config.yaml")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler, ema) -> TrainProgress:
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
    state = json.loads((path / "state.json").read_text())
    return TrainProgress(step=int(state["step"]), position=int(state["position"]))


def prune_checkpoints(output_dir: str | Path, keep: int | None) -> None:
    if not keep:
        return
    root = Path(output_dir) / "checkpoints"
    found = sorted(p for p in root.glob(f"{PREFIX}*") if not p.name.endswith(".tmp"))
    for old in found[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
