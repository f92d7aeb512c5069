"""What every SDXL generator stage shares: model pins, sampler and run options, candidates, task routing.

A generator stage loads its pipelines once per actor (``setup``), expands each input into N
candidates (children with their own ids, hence their own seeds ``child.seed("noise")``),
groups the candidates by image size, and runs them through fixed-shape pipeline calls (see
crispedit.sdxl.batching), so a sample's bytes never depend on which batch it came in.
Every seed and sampler value lands in ``provenance[stage name]``.

Revisions: the pins below are the snapshot commits the public code we read loads these
repositories at (Hub cache paths); a recipe may pin others.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

from pydantic import Field, model_validator

from crispedit.core.limits import MAX_FAN_OUT
from crispedit.core.sample import Sample, derive_seed
from crispedit.core.stage import Resources, Stage, StageParams
from crispedit.models.hub import ModelFiles, sdxl_pipeline_files
from crispedit.models.spec import ModelSpec
from crispedit.sdxl.options import DType, RunOptions, Sampler, Scheduler

SDXL_BASE = ModelSpec(id="stabilityai/stable-diffusion-xl-base-1.0", revision="462165984030d82259a11f4367a4eed129e94a7b")
SDXL_INPAINT = ModelSpec(id="diffusers/stable-diffusion-xl-1.0-inpainting-0.1", revision="115134f363124c53c7d878647567d04daf26e41e")
CONTROLNET_CANNY = ModelSpec(id="diffusers/controlnet-canny-sdxl-1.0", revision="eb115a19a10d14909256db740ed109532ab1483c")
IP_ADAPTER = ModelSpec(id="h94/IP-Adapter", revision="018e402774aeeddd60609b4ecdb7e298259dc729")

Fraction = float | tuple[float, float]


class GeneratorParams(StageParams):
    """Sampler, candidates, routing and run options; each stage adds its models and knobs."""

    candidates: int = Field(1, ge=1, le=MAX_FAN_OUT, description="images per input, each a child with its own seed; `select` keeps the best")
    tasks: list[str] | None = Field(None, description="only samples whose `task` is listed; the others pass through untouched")
    steps: int = Field(30, ge=1, description="denoising steps (diffusers' default 50; --tiny caps them at 3)")
    guidance_scale: float = Field(5.0, ge=0.0, description="classifier-free guidance (SDXL's default 5.0); <= 1 turns it off")
    negative_prompt: str | None = Field(None, description="negative prompt (None: empty, which SDXL base encodes as zeros)")
    scheduler: Scheduler = Field("default", description="sampler: the checkpoint's (Euler for SDXL base), euler, euler_ancestral, ddim, dpmpp_2m")
    dtype: DType = Field("auto", description="'auto': bfloat16 on a GPU that has it, else float16; float32 on the CPU")
    device: str = Field("auto", description="'auto' (the first GPU when there is one), 'cpu', 'cuda', 'cuda:1'...")
    max_batch: int = Field(4, ge=1, description="images (P2P: pairs) per pipeline call")
    exact_batches: bool = Field(
        True, description="pad every call to max_batch so an image's bytes never depend on its batch-mates (costs the padding)"
    )
    vae_tiling: bool = Field(False, description="decode the VAE in tiles (above ~1536 px; slower)")
    cpu_offload: bool = Field(False, description="diffusers' model CPU offload (GPU only): less GPU memory, slower")
    compile: bool = Field(False, description="torch.compile the UNet (a long first call; pays off over many images)")
    variant: str | None = Field(None, description="weights variant to load, e.g. 'fp16'; None: the default files")

    @model_validator(mode="after")
    def _dtype_on_the_stage(self) -> GeneratorParams:
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, ModelSpec) and value.dtype != "float32":
                raise ValueError(f"{name}: set the precision with the stage's `dtype:`, not on the model")
        return self

    def sampler(self) -> Sampler:
        return Sampler(self.steps, self.guidance_scale, self.negative_prompt, self.scheduler)

    def options(self) -> RunOptions:
        return RunOptions(self.dtype, self.device, self.max_batch, self.vae_tiling, self.cpu_offload, self.compile, self.variant)


def check_fraction(value: Fraction) -> Fraction:
    """A fraction of the steps, or a [low, high] range to draw one from per candidate."""
    low, high = (value, value) if isinstance(value, int | float) else value
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"a fraction (or range) within [0, 1], low <= high; got {value}")
    return value


def draw_fraction(value: Fraction, seed: int) -> float:
    if isinstance(value, int | float):
        return float(value)
    low, high = value
    return round(random.Random(seed).uniform(low, high), 6)


GP = TypeVar("GP", bound=GeneratorParams)


class GeneratorStage(Stage[GP]):
    """Base of the SDXL generator stages (not registered itself)."""

    in_actor_pool = True
    resources: ClassVar[Resources] = Resources(num_cpus=1, num_gpus=1)
    default_batch_size: ClassVar[int] = 8
    branch: ClassVar[str | None] = None

    def accepts(self, sample: Sample) -> bool:
        tasks = self.params.tasks
        return sample.alive and (tasks is None or sample.task in tasks)

    @property
    def ready(self) -> bool:
        return getattr(self, "_loaded", False)

    def setup(self) -> None:
        if not self.ready:
            self.load()
            self._loaded = True

    def load(self) -> None:
        """Load the pipelines (subclasses)."""
        raise NotImplementedError

    def twin_seed(self, purpose: str) -> int:
        """Seed of a tiny twin's random weights: fixed by the build seed and the model's role only, so every
        stage of a --tiny build loads the SAME tiny SDXL (a p2p stage then redraws an sdxl_source's image)."""
        return derive_seed(self.context.seed, "sdxl-twin", purpose) % 10_000

    # -- candidates ----------------------------------------------------------------------------
    def expand(self, batch: list[Sample], check: Callable[[Sample], str | None]) -> list[list[Sample]]:
        """Per input: [the input, rejected] when ``check`` finds a problem; itself when one candidate; else N children."""
        out: list[list[Sample]] = []
        for sample in batch:
            problem = check(sample)
            if problem is not None:
                sample.fail(self.name, problem)
                out.append([sample])
            elif self.params.candidates == 1:
                out.append([sample])
            else:
                out.append([sample.spawn(k) for k in range(self.params.candidates)])
        return out

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        families = self.expand(batch, self.problem)
        live = [s for family in families for s in family if s.alive]
        if live:
            self.generate(live)
        return [s for family in families for s in family]

    def problem(self, sample: Sample) -> str | None:
        """A reject reason when the sample cannot be generated for (a missing input), else None."""
        for name in sorted(self.inputs()):
            value = sample.meta.get(name[5:]) if name.startswith("meta.") else getattr(sample, name)
            if value is None or (isinstance(value, str) and not value.strip()):
                return f"missing input: no {name}"
        return None

    def generate(self, samples: list[Sample]) -> None:
        """Fill the samples' images in place (subclasses)."""
        raise NotImplementedError

    def record(self, sample: Sample, **values: Any) -> None:
        """Provenance of this stage's output: model ids, seed, every sampler value, plus ``values``."""
        sample.provenance[self.name] = {"models": self.model_ids(), **self.sampler_record(), **values}
        if self.branch is not None:
            sample.branch = self.branch

    def sampler_record(self) -> dict[str, Any]:
        sampler = self.params.sampler().for_tiny(self.context.tiny)
        return {**sampler.record(), "scheduler_class": getattr(self, "scheduler_class", None)}


class TextToImageStage(GeneratorStage[GP]):
    """A generator that draws with SDXL's text-to-image pipeline from its ``base_model`` (``sdxl_source``, ``p2p``)."""

    def model_ids(self) -> dict[str, str]:
        return {"base_model": self.params.base_model.describe()}

    def model_files(self) -> dict[str, ModelFiles]:
        return {"base_model": sdxl_pipeline_files(self.params.base_model, self.params.variant)}

    def load(self) -> None:
        from crispedit.sdxl.models import load_pipeline, set_scheduler

        p = self.params
        self.pipe = load_pipeline("t2i", p.base_model, p.options(), self.twin_seed("base"))
        self.scheduler_class = set_scheduler(self.pipe, p.scheduler)


def by_size(samples: Sequence[Sample], size_of: Callable[[Sample], tuple[int, int]]) -> dict[tuple[int, int], list[Sample]]:
    """Samples grouped by the pipeline size they need (one call shape per group), in first-seen order."""
    groups: dict[tuple[int, int], list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[size_of(sample)].append(sample)
    return dict(groups)
