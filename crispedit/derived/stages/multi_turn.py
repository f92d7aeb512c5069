"""The ``multi_turn`` stage: K turns of edits on one image, each turn made by the stages you name, each checked against turn 0.

Per item, turn k (1..K) is a child of the item (``turn = k``, lineage the item's plus k):
its source is turn k-1's result (turn 0 is the item's source image), and the ``stages``
listed in the recipe (an instruction stage, any generator: ``classical``, ``style``,
``inpaint``..., maybe filters and ``select``) make its edit, exactly as they would at the
top level; a generator that fans out into candidates gives the turn its first live one.
Then (crispedit.derived.chain):

* Emu Edit's per-pixel thresholding against the previous turn (``pixel_threshold``), so
  what no turn really changed stays the original's pixels;
* the turn's result is measured against turn 0: ``chain_clip_i``, ``chain_dino_i`` and
  ``chain_l1_outside`` (outside the union of every turn's mask so far);
* the chain stops at the first turn that fails, a reject of its own stages or a bound
  here (``chain broken: ...``): that turn is a reject with its images and scores, and no
  later turn is made.

Ids stay deterministic (turn k's id is the child id of the item at position k, whatever the
runner), and every random choice of a turn's stages derives from the turn's own id.
The chain's rows carry ``parent_id`` (the item: the chain), ``turn`` and ``lineage``;
``provenance.multi_turn`` names the turn before. ``compose`` turns runs of turns into pairs;
``crispedit export --magicbrush`` writes the chains in MagicBrush's layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from crispedit.core.bounds import Bound
from crispedit.core.sample import Sample
from crispedit.core.stage import STAGES, Resources, Stage, StageParams, register_stage
from crispedit.derived.chain import chain_break, l1_outside
from crispedit.masks.stages.pixel_threshold import PixelThresholdParams
from crispedit.models.hub import ModelFiles, scorer_files
from crispedit.models.spec import ModelSpec

MAX_TURNS = 16
#: Kinds that make chains or pairs of pairs themselves: not inside a turn.
NOT_IN_A_TURN = ("multi_turn", "compose", "inverse")


class MultiTurnParams(StageParams):
    turns: int = Field(3, ge=1, le=MAX_TURNS, description="edits per chain (turn 1 edits the item's image, turn k the result of turn k-1)")
    stages: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"kind": "instruct", "backend": "template"}, {"kind": "classical"}],
        min_length=1, validate_default=True,
        description="the stages that make one turn, run in order on every turn (each a mapping with `kind:` and its parameters, "
        "as under `stages:`): an instruction stage, a generator, maybe filters; default: a template edit done by `classical`",
    )
    pixel_threshold: PixelThresholdParams | None = Field(
        default_factory=PixelThresholdParams,
        description="Emu Edit's per-pixel thresholding between turns (alpha, sigma, reduce, as the pixel_threshold stage); null: off",
    )
    clip_model: ModelSpec | None = Field(
        default_factory=lambda: ModelSpec(id="openai/clip-vit-large-patch14"),
        description="CLIP checkpoint for `chain_clip_i` (each turn against turn 0); null: no CLIP score",
    )
    dino_model: ModelSpec | None = Field(
        default_factory=lambda: ModelSpec(id="facebook/dinov2-base"),
        description="DINOv2 checkpoint for `chain_dino_i` (each turn against turn 0); null: no DINOv2 score",
    )
    min_chain_clip_i: float | None = Field(None, description="the chain stops at a turn whose CLIP similarity to turn 0 is below this")
    min_chain_dino_i: float | None = Field(None, description="the chain stops at a turn whose DINOv2 similarity to turn 0 is below this")
    max_chain_l1_outside: float | None = Field(
        None, ge=0, le=1, description="the chain stops at a turn whose mean change from turn 0 outside the union of the turns' masks is above this",
    )
    mask_level: int = Field(127, ge=0, le=254, description="a mask pixel is inside a turn's edit region when above this")
    device: str = Field("auto", description="torch device of the CLIP/DINOv2 scorer: auto (CUDA when present), cpu, cuda:1, ...")
    model_batch_size: int = Field(64, ge=1, description="images per scorer forward pass")

    @field_validator("stages")
    @classmethod
    def _turn_stages(cls, entries: list[dict[str, Any]], info: ValidationInfo) -> list[dict[str, Any]]:
        """Each turn stage validated against its kind, and written out whole (defaults included) for the fingerprint."""
        out: list[dict[str, Any]] = []
        for i, raw in enumerate(entries):
            kind = raw.get("kind")
            if kind not in STAGES:
                raise ValueError(f"stages[{i}]: unknown kind {kind!r}; known kinds: {', '.join(sorted(STAGES))}")
            if kind in NOT_IN_A_TURN:
                raise ValueError(f"stages[{i}]: a {kind} stage cannot run inside a turn")
            name = raw.get("name", kind)
            params = {k: v for k, v in raw.items() if k not in ("kind", "name")}
            try:
                validated = STAGES[kind].Params.model_validate(params, context=info.context)
            except ValidationError as error:
                first = error.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"stages[{i}] ({kind}){' ' + where if where else ''}: {first['msg']}") from None
            out.append({"kind": kind, "name": name, **validated.model_dump(mode="json")})
        names = [e["name"] for e in out]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"two turn stages are named {twice[0]!r}; give one a `name:`")
        return out

    @model_validator(mode="after")
    def _scorers(self) -> MultiTurnParams:
        if self.clip_model is None and self.min_chain_clip_i is not None:
            raise ValueError("min_chain_clip_i needs clip_model")
        if self.dino_model is None and self.min_chain_dino_i is not None:
            raise ValueError("min_chain_dino_i needs dino_model")
        return self


def turn_stage(entry: dict[str, Any], context: Any) -> Stage:
    cls = STAGES[entry["kind"]]
    params = cls.Params.model_validate({k: v for k, v in entry.items() if k not in ("kind", "name")})
    return cls(params, context, name=entry.get("name", entry["kind"]))


@register_stage
class MultiTurnStage(Stage[MultiTurnParams]):
    """Chains of K edits per image through any generator, thresholded between turns, each turn checked against turn 0."""

    kind = "multi_turn"
    resources = Resources(num_cpus=1, num_gpus=1)  # the scorer, and most generators a turn runs
    default_batch_size = 8
    cites: ClassVar[tuple[str, ...]] = (
        "Emu Edit (Sheynin et al. 2024): per-pixel thresholding between turns (alpha 0.03 on the low-passed L1)",
        "MagicBrush (Zhang et al. 2023): multi-turn edit chains, each turn's source the previous turn's result",
    )

    def __init__(self, params: MultiTurnParams, context: Any, name: str | None = None) -> None:
        super().__init__(params, context, name)
        self.turn_stages = [turn_stage(entry, context) for entry in params.stages]
        self.embedder: Any = None

    # -- declarations -------------------------------------------------------------------
    @property
    def in_actor_pool(self) -> bool:  # type: ignore[override]
        p = self.params
        return p.clip_model is not None or p.dino_model is not None or any(s.in_actor_pool for s in self.turn_stages)

    def inputs(self) -> set[str]:
        """What the turn stages read that neither the turn (its source image) nor an earlier turn stage provides:
        the item must bring it (its caption, working data), so ``crispedit validate`` checks it like any stage's."""
        needed, have = {"source_image"}, {"source_image"}
        for stage in self.turn_stages:
            needed |= stage.inputs() - have
            have |= stage.outputs() | {f"score.{c}" for c in stage.score_columns()}
        return needed

    def outputs(self) -> set[str]:
        made = {"target_image", "instruction"}
        for stage in self.turn_stages:
            made |= {f for f in stage.outputs() if not f.startswith("meta.")}
        return made

    def chain_columns(self) -> list[str]:
        p = self.params
        columns = (["chain_clip_i"] if p.clip_model else []) + (["chain_dino_i"] if p.dino_model else []) + ["chain_l1_outside"]
        return columns + (["chain_reverted"] if p.pixel_threshold else [])

    def score_columns(self) -> list[str]:
        columns = self.chain_columns()
        for stage in self.turn_stages:
            columns += [c for c in stage.score_columns() if c not in columns]
        return columns

    def bounds(self) -> dict[str, tuple[Bound, Bound]]:
        p = self.params
        bounds = {"chain_clip_i": (p.min_chain_clip_i, None), "chain_dino_i": (p.min_chain_dino_i, None),
                  "chain_l1_outside": (None, p.max_chain_l1_outside)}
        return {k: v for k, v in bounds.items() if v != (None, None)}

    def model_ids(self) -> dict[str, str]:
        ids = {}
        if self.params.clip_model is not None:
            ids["clip"] = self.params.clip_model.describe()
        if self.params.dino_model is not None:
            ids["dino"] = self.params.dino_model.describe()
        for stage in self.turn_stages:
            ids.update({f"{stage.name}.{k}": v for k, v in stage.model_ids().items()})
        return ids

    def model_files(self) -> dict[str, ModelFiles]:
        files = scorer_files(self.params.clip_model, self.params.dino_model)
        for stage in self.turn_stages:
            files.update({f"{stage.name}.{k}": v for k, v in stage.model_files().items()})
        return files

    def setup(self) -> None:
        for stage in self.turn_stages:
            stage.setup()
        p = self.params
        if p.clip_model is not None or p.dino_model is not None:
            from crispedit.models.clip import Embedder

            self.embedder = Embedder(p.clip_model, p.dino_model, p.device, self.context.seed, p.model_batch_size)

    # -- running --------------------------------------------------------------------------
    def __call__(self, batch: list[Sample]) -> list[Sample]:
        made: dict[str, list[Sample]] = {}
        chains: list[Chain] = []
        for item in batch:
            if item.source_image is None:
                item.fail(self.name, "missing image: a chain starts from a source image")
                continue
            made[item.id] = []
            chains.append(Chain(item))
        for k in range(1, self.params.turns + 1):
            if not chains:
                break
            results = self._run_turn([self._turn(chain, k) for chain in chains])
            for chain, result in zip(chains, results, strict=True):
                chain.turns.append(result)
                made[chain.item.id].append(result)
            self._check(chains, k)
            chains = [chain for chain in chains if chain.turns[-1].alive]
        return [s for item in batch for s in (made.get(item.id) or [item])]

    def _turn(self, chain: Chain, k: int) -> Sample:
        """Turn k's sample before its stages run: a child of the item at position k, the previous result as its source."""
        item, last = chain.item, chain.last
        turn = item.spawn(
            k, turn=k, source_image=item.source_image if last is None else last.target_image,
            source_caption=item.source_caption if last is None else (last.target_caption or item.source_caption),
            target_image=None, mask=None, instruction=None, inverse_instruction=None, target_caption=None,
            task=None, branch=None, edit_objects=[], scores={},
        )
        variant = int(item.meta.get("variant", 0))
        # the instruct stage's global mode draws a different edit per variant of one image: one per turn too
        turn.meta = {**item.meta, "image_index": item.meta.get("image_index", item.index),
                     "variant": variant * self.params.turns + k - 1}
        turn.provenance["multi_turn"] = {"turn": k, "of": self.params.turns, "chain": item.id,
                                         "previous": None if last is None else last.id}
        return turn

    def _run_turn(self, turns: list[Sample]) -> list[Sample]:
        """Every turn stage over the turns, as the engine would run them; the turn's result (live if any) per turn."""
        groups: dict[str, list[Sample]] = {t.id: [t] for t in turns}
        for stage in self.turn_stages:
            for chunk in _chunks([t.id for t in turns], groups, stage):
                owner = {s.id: tid for tid in chunk for s in groups[tid]}
                given = [s for tid in chunk for s in groups[tid] if stage.accepts(s)]
                outputs = stage(given) if given else []
                regrouped: dict[str, list[Sample]] = {tid: [s for s in groups[tid] if not stage.accepts(s)] for tid in chunk}
                for out in outputs:
                    tid = owner.get(out.id) or owner.get(out.parent_id or "")
                    if tid is None:
                        raise RuntimeError(f"turn stage {stage.name!r} returned a sample that is none of its inputs' nor their children")
                    regrouped[tid].append(out)
                groups.update(regrouped)
        return [self._adopt(t, groups[t.id]) for t in turns]

    def _adopt(self, turn: Sample, members: list[Sample]) -> Sample:
        """The turn's row: its first live member (a candidate gets the turn's identity), else its first reject."""
        result = next((s for s in members if s.alive), members[0])
        usage: dict[str, float] = {}
        for s in members:
            for counters in s.usage.values():
                for key, value in counters.items():
                    usage[key] = usage.get(key, 0) + value
        if result is not turn:
            picked = result.lineage[len(turn.lineage):]
            result.id, result.parent_id, result.lineage, result.turn = turn.id, turn.parent_id, turn.lineage, turn.turn
            result.provenance["multi_turn"] = {**turn.provenance["multi_turn"], "candidate": list(picked)}
        result.usage = {self.name: usage} if usage else {}
        result.trace = []
        k = turn.turn
        if result.reject is not None:  # refused by one of the turn's stages: the chain stops here
            refused = result.reject
            result.reject = None
            result.fail(self.name, f"{refused.reason} (turn {k}, stage {refused.stage})", filtered=refused.filtered)
        elif result.target_image is None:
            result.fail(self.name, f"no target: the turn's stages made no image (turn {k}); list a generator in `stages`")
        return result

    def _check(self, chains: list[Chain], k: int) -> None:
        """Threshold each live turn k against the previous image, score it against turn 0, stop the chains that fail."""
        from crispedit.masks.pixel_threshold import threshold_pixels

        live = [chain for chain in chains if chain.turns[-1].alive]
        p = self.params
        for chain in live:
            result = chain.turns[-1]
            if p.pixel_threshold is not None:
                result.scores["chain_reverted"] = None
                if result.source_image is not None and result.source_image.shape == result.target_image.shape:
                    t = p.pixel_threshold
                    kept = threshold_pixels(result.source_image, result.target_image, alpha=t.alpha, sigma=t.sigma, reduce=t.reduce)
                    result.target_image = kept.image
                    result.scores["chain_reverted"] = kept.reverted_fraction
            masks = [turn.mask for turn in chain.turns]  # every turn so far, this one included
            result.scores["chain_l1_outside"] = l1_outside(chain.item.source_image, result.target_image, masks, p.mask_level)
        if self.embedder is not None and live:
            from crispedit.models.clip import finite_or_none

            pairs = self.embedder.embed_pairs([c.item.source_image for c in live], [c.turns[-1].target_image for c in live])
            for chain, row in zip(live, pairs.scores(), strict=True):
                if p.clip_model is not None:
                    chain.turns[-1].scores["chain_clip_i"] = finite_or_none(row.get("clip_i"))
                if p.dino_model is not None:
                    chain.turns[-1].scores["chain_dino_i"] = finite_or_none(row.get("dino_i"))
        for chain in live:
            reason = chain_break(chain.turns[-1].scores, self.bounds(), k)
            if reason is not None:
                chain.turns[-1].fail(self.name, reason, filtered=True)


@dataclass
class Chain:
    """One item's chain as it grows: the item (turn 0) and its turns so far."""

    item: Sample
    turns: list[Sample] = field(default_factory=list)

    @property
    def last(self) -> Sample | None:
        return self.turns[-1] if self.turns else None


def _chunks(order: list[str], groups: dict[str, list[Sample]], stage: Stage) -> Iterator[list[str]]:
    """Turns in batches of the stage's own batch size (counting their candidates), a turn never split."""
    chunk: list[str] = []
    size = 0
    for tid in order:
        chunk.append(tid)
        size += len(groups[tid])
        if size >= stage.default_batch_size:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk
