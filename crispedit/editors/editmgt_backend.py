"""The ``editmgt`` backend of ``edit_model``: the bundled trainer's EditMGT model as a generator.

A model trained with ``crispedit train`` (a checkpoint folder, or its output dir: the latest
checkpoint) or the released EditMGT layout is loaded by the trainer's own
:class:`crispedit.mgt.pipeline.EditPipeline`, so a trained model produces the next round's
candidates exactly as ``crispedit edit`` would. EditMGT edits a square window: the source's short
side scaled to the model's resolution and the centre cut, as the trainer crops; the pair a
candidate records is that window and its edit (both at the model's resolution), so source and
target stay pixel-aligned. Each candidate is one call with its own seed (the MaskGIT sampler
draws from one generator per call), so a batch gives what one by one gives. The model's task
vectors, when it has them, get the sample's ``task``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from crispedit.core.stage import StageParams

#: Where --tiny's random-init EditMGT checkpoint is written, once per process and seed.
_TINY: dict[int, Path] = {}
_TINY_LOCK = threading.Lock()


class EditMGTParams(StageParams):
    """The ``editmgt:`` block of ``edit_model``."""

    checkpoint: str | None = Field(
        None, description="a crispedit training checkpoint, a training output dir (its latest checkpoint) or a released EditMGT "
        "folder (editmgt/, vqvae/, scheduler/, ...); --tiny: a random-init tiny model instead",
    )
    steps: int | None = Field(None, ge=1, description="MaskGIT steps; default: the checkpoint's sample.steps (--tiny caps them at 3)")
    guidance_scale: float | None = Field(None, ge=0, description="classifier-free guidance; default: the checkpoint's")
    reference_strength: float | None = Field(None, ge=0, description="weight of the source image's tokens; default: the checkpoint's")
    tau: float | None = Field(None, ge=0, description="region-hold threshold (0: off); default: the checkpoint's")
    use_ema: bool = Field(True, description="the EMA weights when the checkpoint has them")
    use_task: bool = Field(True, description="give a model with task vectors the sample's task (its category)")
    overrides: list[str] = Field(default_factory=list, description="config overrides KEY=VALUE, as `crispedit edit --set`")
    device: str = Field("auto", description="'auto' (the first GPU when there is one), 'cpu', 'cuda', 'cuda:1'...")


class EditMGTEditor:
    """One loaded EditMGT pipeline; loads in :meth:`load` (a stage's ``setup``)."""

    def __init__(self, params: EditMGTParams, tiny: bool, twin_seed: int) -> None:
        self.params = params
        self.tiny = tiny
        self.twin_seed = twin_seed
        self.pipe: Any = None
        self.path: Path | None = None

    def model_id(self) -> str:
        return "tiny" if self.tiny else f"editmgt:{self.params.checkpoint}"

    def load(self) -> None:
        from crispedit.mgt.pipeline import EditPipeline
        from crispedit.models.devices import resolve_device

        p = self.params
        if self.tiny:
            self.path = tiny_checkpoint(self.twin_seed)
        elif p.checkpoint is None:
            raise ValueError("editmgt.checkpoint: name a training checkpoint, output dir or released EditMGT folder")
        else:
            self.path = Path(p.checkpoint).expanduser()
            if not self.path.exists():
                raise FileNotFoundError(f"editmgt.checkpoint: no such file or directory: {p.checkpoint}")
        self.pipe = EditPipeline.from_checkpoint(self.path, device=resolve_device(p.device), use_ema=p.use_ema, overrides=p.overrides)

    @property
    def resolution(self) -> int:
        return int(self.pipe.cfg.model.resolution)

    def sampler(self) -> dict[str, Any]:
        """The sampler values the calls use (what provenance records)."""
        from crispedit.sdxl.options import TINY_MAX_STEPS

        s, p = self.pipe.cfg.sample, self.params
        steps = p.steps or s.steps
        return {
            "steps": min(steps, TINY_MAX_STEPS) if self.tiny else steps,
            "guidance_scale": s.guidance_scale if p.guidance_scale is None else p.guidance_scale,
            "reference_strength": s.reference_strength if p.reference_strength is None else p.reference_strength,
            "tau": s.tau if p.tau is None else p.tau,
            "resolution": self.resolution,
        }

    def window(self, image: np.ndarray) -> np.ndarray:
        """The square the model edits: the short side scaled to its resolution, the centre cut (the trainer's crop)."""
        source, _ = self.pipe.preprocess(_pil(image))
        return np.ascontiguousarray((source[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))

    def edit(self, image: np.ndarray, instruction: str, seed: int, task: str | None) -> np.ndarray:
        s = self.sampler()
        pipe = self.pipe
        edited = pipe(
            _pil(image), instruction, steps=s["steps"], guidance_scale=s["guidance_scale"], seed=seed, tau=s["tau"],
            reference_strength=s["reference_strength"], task=task if (self.params.use_task and pipe.tasks and task in pipe.tasks) else None,
        )
        return np.asarray(edited.convert("RGB"))


def _pil(image: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(image)


def tiny_checkpoint(seed: int) -> Path:
    """A random-init EditMGT checkpoint of the bundled ``tiny`` trainer config, written once per process.

    It is a checkpoint as ``crispedit train`` writes one (config.yaml + model.safetensors), so the
    backend's --tiny path loads through the same code as a trained model.
    """
    import atexit
    import shutil
    import tempfile

    with _TINY_LOCK:
        if seed in _TINY and (_TINY[seed] / "model.safetensors").exists():
            return _TINY[seed]
        import torch
        from safetensors.torch import save_file

        from crispedit.core.presets import find_preset
        from crispedit.mgt.components import build_transformer_from_config
        from crispedit.mgt.config import MGTConfig
        from crispedit.models.twins import seeded

        cfg = MGTConfig.load(find_preset("mgt", "tiny"))
        with seeded(seed):
            model = build_transformer_from_config(cfg.model)
        folder = Path(tempfile.mkdtemp(prefix="crispedit-tiny-editmgt-"))
        atexit.register(shutil.rmtree, folder, True)
        with torch.no_grad():
            save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
        cfg.save(folder / "config.yaml")
        _TINY[seed] = folder
        return folder
