"""The quality filters on tiny twins: scores against direct computations, thresholds, presets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from crispedit.core.presets import BUNDLED
from crispedit.core.sample import Sample, sample_id
from crispedit.core.stage import BuildContext
from crispedit.engine.run import apply_stage
from crispedit.filters.clip_filter import ClipFilter, ClipFilterParams
from crispedit.filters.locality_filter import LocalityFilter, LocalityParams, masked_l1
from crispedit.filters.pixel_change import PixelChangeFilter, PixelChangeParams
from crispedit.filters.safety_filter import SafetyFilter, SafetyParams
from crispedit.models.clip import Embedder, Preprocess, directional_similarity, tiny_clip
from crispedit.models.spec import ModelSpec, tiny_swap
from crispedit.recipe.catalog import STAGES

CONTEXT = BuildContext("filters", "filters", seed=0, tiny=True)


def picture(seed: int, height: int = 48, width: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, int(rng.integers(0, 255)))], -1)
    return np.clip(base + rng.integers(-30, 30, (height, width, 3)), 0, 255).astype(np.uint8)


def pair(i: int, source: np.ndarray | None = None, caption: str | None = None) -> Sample:
    src = picture(i) if source is None else source
    return Sample(
        id=sample_id("filters", i), index=i, source_ref=f"p{i}", source_image=src,
        target_image=np.clip(src.astype(np.int16) + 25 * (i + 1), 0, 255).astype(np.uint8)[:, ::-1].copy(),
        source_caption=caption or f"a photo of a cat number {i}", target_caption=f"a photo of a red dog number {i}",
        instruction="turn the cat into a red dog",
    )


@pytest.fixture(scope="module")
def clip_stage() -> ClipFilter:
    stage = ClipFilter(ClipFilterParams(clip_model="tiny", dino_model="tiny"), CONTEXT)
    stage.setup()
    return stage


def test_torch_preprocessing_matches_the_image_processor() -> None:
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pre = Preprocess.from_processor(processor)
    assert pre == Preprocess(32, (32, 32), tuple(processor.image_mean), tuple(processor.image_std))
    images = [picture(1, 48, 40), picture(2, 40, 64), picture(3, 32, 32)]
    ours = pre(images, torch.device("cpu"))
    theirs = processor(images=images, return_tensors="pt").pixel_values
    assert ours.shape == theirs.shape == (3, 3, 32, 32)
    # PIL and torch bicubic differ by a grey level here and there; normalised, that is < 0.1
    assert (ours - theirs).abs().max() < 0.1
    assert (ours - theirs).abs().mean() < 0.01
    assert torch.equal(ours[2], theirs[2])  # no resize: identical


def test_scores_match_a_direct_computation_on_the_tiny_models(clip_stage: ClipFilter) -> None:
    batch = [pair(i) for i in range(3)]
    scores = clip_stage.score(batch)
    model, tokenizer, pre = tiny_clip(CONTEXT.seed)  # the same weights, built again
    dino = clip_stage.embedder.dino
    for s, got in zip(batch, scores, strict=True):
        with torch.no_grad():
            pixels = pre([s.source_image, s.target_image], torch.device("cpu")).double()
            image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
            ids = tokenizer([s.source_caption, s.target_caption], padding="max_length", max_length=77, return_tensors="pt")
            text = F.normalize(model.get_text_features(input_ids=ids.input_ids, attention_mask=ids.attention_mask).pooler_output, dim=-1)
            dino_pixels = clip_stage.embedder.dino_pre([s.source_image, s.target_image], torch.device("cpu")).double()
            d = F.normalize(dino(pixel_values=dino_pixels).pooler_output, dim=-1)
        # IP2P's formula, written as in its metrics/clip_similarity.py
        direction = F.cosine_similarity(image[1:2] - image[0:1], text[1:2] - text[0:1]).item()
        assert got["clip_dir"] == pytest.approx(direction, abs=1e-9)
        assert got["clip_t_source"] == pytest.approx(F.cosine_similarity(image[0:1], text[0:1]).item(), abs=1e-9)
        assert got["clip_t_target"] == pytest.approx(F.cosine_similarity(image[1:2], text[1:2]).item(), abs=1e-9)
        assert got["clip_i"] == pytest.approx(F.cosine_similarity(image[0:1], image[1:2]).item(), abs=1e-9)
        assert got["dino_i"] == pytest.approx(F.cosine_similarity(d[0:1], d[1:2]).item(), abs=1e-9)
    assert len({round(s["clip_dir"], 6) for s in scores}) == 3  # the scores do vary per pair


def test_directional_similarity_of_no_change_is_zero() -> None:
    v = F.normalize(torch.randn(8, dtype=torch.float64), dim=0)
    w = F.normalize(torch.randn(8, dtype=torch.float64), dim=0)
    assert directional_similarity(v, v, v, w) == 0.0
    assert directional_similarity(v, w, v, w) == pytest.approx(1.0)
    assert directional_similarity(v, w, w, v) == pytest.approx(-1.0)


def test_each_distinct_image_and_caption_is_embedded_once() -> None:
    embedder = Embedder(ModelSpec(id="tiny"), ModelSpec(id="tiny"), "cpu")
    seen = {"vision": 0, "text": 0, "dino": 0}

    def counter(name: str):  # rows through each tower's forward
        def hook(module, args, kwargs):  # noqa: ANN001, ANN202
            tensor = kwargs.get("pixel_values", kwargs.get("input_ids", args[0] if args else None))
            seen[name] += tensor.shape[0]

        return hook

    embedder.clip.vision_model.register_forward_pre_hook(counter("vision"), with_kwargs=True)
    embedder.clip.text_model.register_forward_pre_hook(counter("text"), with_kwargs=True)
    embedder.dino.register_forward_pre_hook(counter("dino"), with_kwargs=True)
    parent = pair(0)
    children = [parent.spawn(k, target_image=picture(10 + k)) for k in range(4)]  # share the parent's source array
    pairs = embedder.embed_pairs([c.source_image for c in children], [c.target_image for c in children],
                                 [c.source_caption for c in children], [c.target_caption for c in children])
    assert seen == {"vision": 5, "text": 2, "dino": 5}  # 1 source + 4 targets; 2 distinct captions
    assert len(pairs.scores()) == 4


def test_thresholds_keep_and_drop_exactly_the_rows_they_should(clip_stage: ClipFilter) -> None:
    batch = [pair(i) for i in range(6)]
    scores = clip_stage.score([s.clone() for s in batch])
    values = sorted(s["clip_dir"] for s in scores)
    cut = (values[2] + values[3]) / 2  # three above, three below
    stage = ClipFilter(ClipFilterParams(clip_model="tiny", dino_model="tiny", min_clip_dir=cut), CONTEXT)
    stage.setup()
    out = apply_stage(stage, "clip_filter", batch, batch_size=4)
    kept = {s.id for s in out if s.alive}
    expected = {s.id for s, sc in zip(batch, scores, strict=True) if sc["clip_dir"] >= cut}
    assert kept == expected and len(kept) == 3
    for s in out:
        assert set(s.scores) == {"clip_t_source", "clip_t_target", "clip_i", "clip_dir", "dino_i"}  # kept on rejects too
        if not s.alive:
            assert s.reject.reason.startswith("wrong direction: clip_dir ") and s.reject.filtered
    # the boundary itself is kept; both bounds of clip_i apply
    edge = ClipFilter(ClipFilterParams(clip_model="tiny", min_clip_dir=0.2, min_clip_i=0.7, max_clip_i=0.99), CONTEXT)
    ok = {"clip_t_source": 0.3, "clip_t_target": 0.3, "clip_i": 0.7, "clip_dir": 0.2}
    assert edge.decide(ok) is None
    assert edge.decide({**ok, "clip_dir": 0.19999}).startswith("wrong direction")
    assert edge.decide({**ok, "clip_i": 0.995}).startswith("no visible change")
    assert edge.decide({**ok, "clip_i": 0.69}).startswith("image changed too much")
    assert edge.decide({**ok, "clip_dir": None}).startswith("no score")


def test_a_rejected_sample_is_still_scored_by_later_filters(clip_stage: ClipFilter) -> None:
    batch = [pair(i) for i in range(2)]
    batch[0].fail("pixel_change", "too little change: pixel_l1 0.001 < 0.01", filtered=True)
    batch[1].fail("instruct", "llm-invalid: no JSON")  # not a filter's reject: it is not scored
    out = apply_stage(clip_stage, "clip_filter", batch, batch_size=8)
    assert "clip_dir" in out[0].scores and out[0].reject.stage == "pixel_change"
    assert out[1].scores == {}


def test_pixel_change_scores_only_without_bounds_and_gives_no_score_for_pairs_of_two_sizes() -> None:
    """A re-edited dataset's old target may differ in size from its source: no pixel_l1 (not a crash)."""
    source = np.zeros((8, 8, 3), np.uint8)

    def run(params: PixelChangeParams) -> list[Sample]:
        batch = [Sample(id="a", index=0, source_ref="a", source_image=source, target_image=source + 51),
                 Sample(id="b", index=1, source_ref="b", source_image=source, target_image=np.zeros((4, 8, 3), np.uint8))]
        return apply_stage(PixelChangeFilter(params, CONTEXT), "pixel_change", batch, batch_size=8)

    bounded = run(PixelChangeParams())
    assert bounded[0].alive and bounded[0].scores["pixel_l1"] == pytest.approx(0.2)
    assert bounded[1].scores["pixel_l1"] is None and bounded[1].reject.reason.startswith("no score: pixel_l1")
    only = run(PixelChangeParams(min_l1=None, max_l1=None))
    assert all(s.alive for s in only) and only[0].scores["pixel_l1"] == pytest.approx(0.2)
    assert PixelChangeFilter(PixelChangeParams(min_l1=None, max_l1=None), CONTEXT).thresholds() == {}
    assert PixelChangeFilter(PixelChangeParams(min_l1=None), CONTEXT).thresholds() == {"pixel_l1": (None, 1.0)}


def test_aesthetic_head_from_safetensors(tmp_path: Path, clip_stage: ClipFilter) -> None:
    from safetensors.torch import save_file
    from torch import nn

    torch.manual_seed(0)
    width = clip_stage.embedder.clip.config.projection_dim
    dims = [width, 64, 32, 16, 8, 1]  # the LAION head's layout (Linear at 0, 2, 4, 6, 7), narrower
    layers = {0: nn.Linear(dims[0], dims[1]), 2: nn.Linear(dims[1], dims[2]), 4: nn.Linear(dims[2], dims[3]),
              6: nn.Linear(dims[3], dims[4]), 7: nn.Linear(dims[4], dims[5])}
    state = {f"layers.{i}.{k}": v.detach().clone() for i, layer in layers.items() for k, v in layer.state_dict().items()}
    save_file(state, str(tmp_path / "head.safetensors"))
    stage = ClipFilter(ClipFilterParams(clip_model="tiny", aesthetic_head=tmp_path / "head.safetensors", min_aesthetic=-100), CONTEXT)
    stage.setup()
    batch = [pair(i) for i in range(2)]
    scores = stage.score(batch)
    embeds = stage.embedder.clip_image([batch[0].target_image])
    x = embeds.double()
    for i in (0, 2, 4, 6, 7):
        x = F.linear(x, state[f"layers.{i}.weight"].double(), state[f"layers.{i}.bias"].double())
    assert scores[0]["aesthetic_target"] == pytest.approx(float(x[0, 0]), abs=1e-9)
    assert "aesthetic_target" in stage.score_columns() and stage.thresholds()["aesthetic_target"] == (-100, None)


def test_safety_margin_agrees_with_the_checkers_own_flag() -> None:
    stage = SafetyFilter(SafetyParams(model="tiny", max_nsfw=0.0), CONTEXT)
    stage.setup()
    checker = stage.checker
    batch = [pair(i) for i in range(4)]
    images = [img for s in batch for img in (s.source_image, s.target_image)]
    pixels = stage.preprocess(images, stage.device)
    with torch.no_grad():  # put two concepts near the images' embeddings, as real unsafe concepts would be
        embeds = F.normalize(checker.visual_projection(checker.vision_model(pixels.double())[1]), dim=-1)
        checker.concept_embeds[0] = embeds[0]
        checker.concept_embeds[1] = embeds[5]
        checker.concept_embeds_weights.fill_(0.99)
    scores = stage.score(batch)
    margins = [v for s in scores for v in (s["nsfw_source"], s["nsfw_target"])]
    _, flags = checker.forward_onnx(pixels.double(), torch.zeros(len(images), 3, 8, 8))
    assert [m > 0 for m in margins] == flags.tolist()
    assert flags[0] and flags[5] and not all(flags)
    out = apply_stage(stage, "safety_filter", batch, batch_size=8)
    assert [s.alive for s in out] == [not (scores[i]["nsfw_source"] > 0 or scores[i]["nsfw_target"] > 0) for i in range(4)]
    assert out[0].reject.reason.startswith("unsafe: nsfw_source")


def test_locality_inside_and_outside_the_mask() -> None:
    source = np.zeros((8, 8, 3), np.uint8)
    target = source.copy()
    target[:4] = 255  # the top half changed completely
    target[7, 7] = 51  # one pixel outside leaked by 0.2
    mask = np.zeros((8, 8), np.uint8)
    mask[:4] = 255
    inside, outside = masked_l1(source, target, mask)
    assert inside == pytest.approx(1.0) and outside == pytest.approx(0.2 / 32)
    assert masked_l1(source, target, None) == (None, None)
    assert masked_l1(source, target, np.full((8, 8), 255, np.uint8))[1] is None  # a global edit has no outside
    stage = LocalityFilter(LocalityParams(max_l1_outside=0.001, min_l1_inside=0.5), CONTEXT)
    s = Sample(id="a", index=0, source_ref="a", source_image=source, target_image=target, mask=mask)
    [out] = apply_stage(stage, "locality_filter", [s], batch_size=1)
    assert out.reject.reason.startswith("edit leaked outside the mask: l1_outside 0.0063 > 0.001")
    assert stage.decide({"l1_inside": None, "l1_outside": None}).startswith("no mask")


@pytest.mark.parametrize("name", ["ip2p", "ultraedit", "mllm_judge"])
def test_presets_validate_and_cite_each_threshold(name: str) -> None:
    path = BUNDLED / "filters" / f"{name}.yaml"
    chain = yaml.safe_load(path.read_text(encoding="utf-8"))
    lines = path.read_text(encoding="utf-8").splitlines()
    for raw in tiny_swap(chain["stages"]):
        cls = STAGES[raw["kind"]]
        stage = cls(cls.Params.model_validate({k: v for k, v in raw.items() if k != "kind"}), CONTEXT)
        assert stage.score_columns()
    for line in lines:  # every number in a stage is commented with where it comes from
        stripped = line.strip()
        if stripped.startswith(("min_", "max_")):
            assert "#" in stripped, f"{name}.yaml: cite the source of {stripped!r}"
    if name == "ip2p":
        raw = {k: v for k, v in tiny_swap(chain["stages"])[0].items() if k != "kind"}
        stage = ClipFilter(ClipFilterParams.model_validate(raw), CONTEXT)
        assert stage.thresholds() == {"clip_t_source": (0.2, None), "clip_t_target": (0.2, None), "clip_dir": (0.2, None), "clip_i": (0.7, None)}
