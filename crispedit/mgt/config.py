"""Configuration of the bundled EditMGT trainer: model, data, training and sampling.

One YAML file (a bundled preset: crispedit/presets/mgt/tiny.yaml, full.yaml, ...) describes everything a run needs.
A checkpoint stores a copy, so `crispedit edit` and `crispedit eval` rebuild exactly the
components that were trained, including the tiny random-init twins used on CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crispedit.core.located import LocatedError, LocatedYaml, load_located, validation_problems
from crispedit.models.pins import pinned


class ConfigError(LocatedError):
    """A trainer config that cannot be used: each problem names the file, line and key."""

    title = "invalid trainer config"


class _Strict(BaseModel):
    """Unknown keys are errors, and so is a value of the wrong type (``learning_rate: "1e-4"``): no coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class TransformerConfig(_Strict):
    """Shape of the MMDiT transformer. Field names follow the released Meissonic/EditMGT config."""

    num_layers: int = 14
    num_single_layers: int = 28
    attention_head_dim: int = 128
    num_attention_heads: int = 8
    joint_attention_dim: int = 2304
    pooled_projection_dim: int = 1024
    axes_dims_rope: tuple[int, int, int] = Field((16, 56, 56), strict=False)
    vocab_size: int = 8256
    codebook_size: int = 8192
    downsample: bool = True
    upsample: bool = True
    connector_type: str = "linear"
    micro_cond_encode_dim: int = 256

    @property
    def mask_token_id(self) -> int:
        """The last vocabulary entry is the [MASK] token, as upstream (8255 at full size)."""
        return self.vocab_size - 1


class ComponentConfig(_Strict):
    """A pretrained component: a hub id or local path, or a tiny random-init twin when `tiny`."""

    id: str = ""
    subfolder: str | None = None
    tokenizer_subfolder: str | None = None
    revision: str | None = None
    tiny: bool = False

    @model_validator(mode="before")
    @classmethod
    def _pin(cls, value: Any) -> Any:
        """A known Hub id without a revision gets its verified pin (crispedit.models.pins)."""
        if isinstance(value, dict) and value.get("revision") is None and not value.get("tiny") and value.get("id") is not None:
            return {**value, "revision": pinned(value["id"], None)}
        return value


class ModelConfig(_Strict):
    transformer: TransformerConfig = Field(default_factory=TransformerConfig)
    vq: ComponentConfig = Field(default_factory=lambda: ComponentConfig(id="MeissonFlow/Meissonic", subfolder="vqvae"))
    clip: ComponentConfig = Field(
        default_factory=lambda: ComponentConfig(id="MeissonFlow/Meissonic", subfolder="text_encoder", tokenizer_subfolder="tokenizer")
    )
    llm: ComponentConfig = Field(default_factory=lambda: ComponentConfig(id="google/gemma-2-2b-it"))
    # Optional pretrained transformer weights (a safetensors file or diffusers folder) to start from.
    init_transformer: ComponentConfig | None = None
    # Emu Edit task embeddings: one learned vector per task category, added to the conditioning
    # that drives the adaptive norms. Off by default. `tasks` is the vocabulary; when it is empty
    # and task_embeddings is on, training collects it from the shards' `task` column.
    task_embeddings: bool = False
    tasks: tuple[str, ...] = Field((), strict=False)
    llm_hidden_layer: int = -2
    text_max_length: int = 256
    clip_max_length: int = 77
    resolution: int = 1024
    # Tiny twins are initialised from this seed so every process rebuilds identical weights.
    tiny_seed: int = 1234

    @property
    def num_tasks(self) -> int:
        return len(self.tasks) if self.task_embeddings else 0

    def task_id(self, name: str | None) -> int:
        """Index of a task in the vocabulary; -1 (no task vector) for None or without task embeddings."""
        if name is None or not self.task_embeddings:
            return -1
        if name not in self.tasks:
            raise ValueError(f"unknown task {name!r}; this model knows: {', '.join(self.tasks) or '(none)'}")
        return self.tasks.index(name)


class DatasetSpec(_Strict):
    path: str
    ratio: float = 1.0


class TrainConfig(_Strict):
    output_dir: str = "mgt-out"
    seed: int = 0
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_steps: int = 1000
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 0.01
    max_grad_norm: float = 10.0
    mixed_precision: str = "no"
    min_masking_rate: float = 0.0
    # Classifier-free guidance dropout: each sample independently loses its text
    # (replaced by the empty prompt's encoding, what the sampler's unconditional branch
    # sees) and/or its source image (replaced by an all-[MASK] reference stream).
    text_drop_prob: float = 0.1
    image_drop_prob: float = 0.05
    random_crop: bool = True
    checkpoint_every: int = 200
    checkpoints_total_limit: int | None = 3
    log_every: int = 10
    use_ema: bool = False
    ema_decay: float = 0.9999
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_targets: tuple[str, ...] = Field(("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"), strict=False)
    datasets: list[DatasetSpec] = Field(default_factory=list)

    @field_validator("datasets", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        """A dataset may be written as its path alone."""
        return [{"path": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value
    # Data loading (see loader.py). Worker processes decode; `loader_streams` fixes the sample
    # order, so any num_workers dividing it gives the same batches; each stream mixes
    # `shuffle_row_groups` row groups at a time (memory: streams x that many row groups).
    num_workers: int = 2
    loader_streams: int = 4
    shuffle_row_groups: int = 2
    # "ratio": the model is given the mask ratio r (it embeds r*1000). "ratio_x1000": upstream
    # EditMGT training, which feeds r*1000 (the model embeds r*10^6): use it to fine-tune released weights.
    timestep_mode: Literal["ratio", "ratio_x1000", "step_index"] = "ratio"
    # accelerate tracker: "auto" = tensorboard when installed, else none; "none"; or a tracker name.
    report_to: str = "auto"


class SampleConfig(_Strict):
    steps: int = 36
    # Classifier-free guidance l_u + s (l_c - l_u) for s > 1; s <= 1 samples the conditional branch alone (as upstream).
    guidance_scale: float = 6.0
    # Attention multiplier between the reference stream and the rest (1.1 upstream at inference).
    reference_strength: float = 1.1
    tau: float = 0.0
    # Global block indices (double blocks first, then single blocks) whose text->target
    # attention is captured for region-hold. Upstream infer.py: 28-36.
    capture_blocks: tuple[int, ...] = Field((28, 29, 30, 31, 32, 33, 34, 35, 36), strict=False)
    negative_prompt: str = ""
    temperature: tuple[float, float] = Field((2.0, 0.0), strict=False)
    # "ratio": the model is given the current mask ratio, as train.timestep_mode ratio.
    # "ratio_x1000": the mask ratio times 1000, as upstream training (train.timestep_mode ratio_x1000).
    # "step_index": upstream inference, the step index N-1..0; what their released weights were sampled with.
    timestep_mode: Literal["ratio", "ratio_x1000", "step_index"] = "ratio"
    # Fraction of tokens still masked after step k of N: cosine cos(pi/2 (k+1)/N), or linear 1 - (k+1)/N
    # (in float32, as upstream's scheduler).
    masking_schedule: Literal["cosine", "linear"] = "cosine"


class MGTConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    name: str = "editmgt"

    @property
    def is_tiny(self) -> bool:
        return self.model.vq.tiny or self.model.clip.tiny or self.model.llm.tiny

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> MGTConfig:
        """Validate plain data; problems are named by their dotted key (``where`` names the source)."""
        return _validate(LocatedYaml(where, data))

    @classmethod
    def load(cls, path: str | Path) -> MGTConfig:
        """Read and validate a YAML config; every problem names the file, line and key, as a recipe's do."""
        return _validate(load_located(Path(path), ConfigError))


def _validate(doc: LocatedYaml) -> MGTConfig:
    data = {} if doc.data is None else doc.data
    if not isinstance(data, dict):
        raise ConfigError([doc.problem((), "a trainer config is a mapping with model, train and sample")])
    try:
        return MGTConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(validation_problems(doc, (), error)) from None


def resolve_config(name_or_path: str | Path) -> Path:
    """Accept a path or a bundled config name (`tiny`, `small`, `full`, `finetune-released`)."""
    from crispedit.core.presets import find_preset

    return find_preset("mgt", name_or_path)


def apply_overrides(cfg: MGTConfig, assignments: list[str]) -> MGTConfig:
    """`--set model.resolution=512 --set sample.steps=16`: values parsed as YAML, keys checked as in a file."""
    data = cfg.to_dict()
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. sample.steps=16")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {} if node.get(part) is None else node[part]
            if not isinstance(node[part], dict):
                raise ValueError(f"--set {key}: {part} is not a section")
            node = node[part]
        node[leaf] = yaml.safe_load(raw)
    return MGTConfig.from_dict(data, where="--set")
