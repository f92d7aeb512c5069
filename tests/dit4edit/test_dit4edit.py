"""DiT4Edit on the tiny PixArt / T5 / VAE twins: inversion, attention control, merging, masks, determinism.

32-px images give 4x4 latents and (patch size 1) a 4x4 token grid; a handful of steps.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from crispedit.core.sample import Sample, sample_id
from crispedit.core.stage import BuildContext
from crispedit.dit4edit.attention import (
    AttentionController,
    CallLayout,
    EditControl,
    install,
    prompt_tokens,
    refine_mapper,
    replace_mapper,
    uninstall,
)
from crispedit.dit4edit.merging import bipartite_matching, partition
from crispedit.dit4edit.models import PIXART_SCHEDULER, tiny_pixart, tiny_pixart_transformer, tiny_t5, tiny_t5_tokenizer
from crispedit.dit4edit.pipeline import DiT4EditPipeline, EditSettings, PromptEncoder, PromptMismatch
from crispedit.dit4edit.solver import Sampler, Schedule, invert, rms, sample
from crispedit.dit4edit.stages import Dit4EditParams, Dit4EditStage, fit_size

CPU = torch.device("cpu")
SOURCE = "a photo of a red cat"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread than contending for the machine's cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe() -> DiT4EditPipeline:
    return DiT4EditPipeline(tiny_pixart(0), PromptEncoder(lambda: tiny_t5(1), CPU, "keep"), 16, CPU)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    y, x = np.mgrid[0:32, 0:32]
    picture = np.stack([x * 8, y * 8, np.full_like(x, 90)], -1).astype(np.uint8)
    picture[8:20, 10:22] = (200, 40, 40)
    return picture


# --- the solver -----------------------------------------------------------------------------------


def test_our_step_math_follows_diffusers_dpm_solver_on_pixart_schedule() -> None:
    from diffusers import DPMSolverMultistepScheduler

    reference = DPMSolverMultistepScheduler(**PIXART_SCHEDULER)
    schedule = Schedule.from_scheduler(DPMSolverMultistepScheduler(**PIXART_SCHEDULER), 12)
    reference.set_timesteps(12)
    assert list(schedule.timesteps) == reference.timesteps.tolist()
    assert schedule.orders == (1,) + (2,) * 10 + (1,)
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(4, 4, generator=generator) * 0.3
    theirs = ours = torch.randn(1, 4, 4, 4, generator=generator)
    sampler = Sampler(schedule)
    for i, t in enumerate(reference.timesteps):
        noise = lambda y, i=i: torch.tanh(torch.einsum("bchw,cd->bdhw", y, weights)) * (1 + i / 12)  # noqa: E731
        theirs = reference.step(noise(theirs), t, theirs).prev_sample
        ours = sampler.step(i, ours, noise(ours))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_corrected_inversion_of_a_first_order_sampler_is_exact() -> None:
    """Without the second-order history term, the fixed point inverts each step to the tolerance."""
    from diffusers import DPMSolverMultistepScheduler

    from crispedit.dit4edit.models import TINY_SCHEDULER

    model = tiny_pixart_transformer(0)
    schedule = Schedule.from_scheduler(DPMSolverMultistepScheduler(**{**TINY_SCHEDULER, "solver_order": 1}), 6)
    text = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(1))

    def predict(y: torch.Tensor, i: int) -> torch.Tensor:
        with torch.no_grad():
            out = model(y, encoder_hidden_states=text, timestep=torch.tensor([schedule.timesteps[i]]),
                        added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
        return out[:, :4]

    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    naive = invert(schedule, latents, predict)
    exact = invert(schedule, latents, predict, max_corrections=20, tolerance=1e-7)
    naive_error = rms(sample(schedule, naive.noise, predict) - latents) / rms(latents)
    exact_error = rms(sample(schedule, exact.noise, predict) - latents) / rms(latents)
    assert exact_error < 1e-4 < 0.01 < naive_error
    assert naive.evaluations == 6 and exact.corrections > 0


def test_inversion_then_regeneration_reproduces_the_source_latents(pipe: DiT4EditPipeline, image: np.ndarray) -> None:
    """Source caption in both branches: the regenerated source ends on the encoded source."""
    errors = {}
    for corrections, passes in ((0, 1), (3, 1), (6, 4)):
        settings = EditSettings(steps=8, max_corrections=corrections, passes=passes, tolerance=1e-6, merge_ratio=0.0)
        result = pipe.edit(image, SOURCE, SOURCE, settings)
        errors[corrections, passes] = result.reconstruction_error
        assert result.inversion.evaluations >= 8
    naive, corrected, swept = errors[0, 1], errors[3, 1], errors[6, 4]
    assert corrected < naive / 5, errors  # the correction pays
    assert corrected < 0.05 and swept < 2e-3, errors  # and the sweeps converge on the exact inverse


def test_the_source_branch_never_sees_the_target(pipe: DiT4EditPipeline, image: np.ndarray) -> None:
    settings = EditSettings(steps=5, merge_ratio=0.5, self_switch=0.4)
    first = pipe.edit(image, SOURCE, "a photo of a blue dog", settings, seed=3)
    second = pipe.edit(image, SOURCE, "a photo of a red cat on a mat", settings, seed=3)
    assert torch.equal(first.source_latents, second.source_latents)
    assert not torch.equal(first.target_latents, second.target_latents)


# --- attention control ---------------------------------------------------------------------------------


@pytest.mark.parametrize("merge_ratio", [0.0, 0.5])
def test_identical_prompts_with_full_self_attention_injection_give_the_source(
    pipe: DiT4EditPipeline, image: np.ndarray, merge_ratio: float,
) -> None:
    settings = EditSettings(
        steps=5, self_switch=1.0, self_blocks=tuple(range(pipe.num_blocks)), guidance=2.0, inversion_guidance=2.0,
        merge_ratio=merge_ratio, max_corrections=1,
    )
    result = pipe.edit(image, SOURCE, SOURCE, settings, seed=7)
    assert result.cross is None and result.self_switch == 5  # equal captions: cross-attention control is a no-op
    assert torch.equal(result.target_latents, result.source_latents)


def test_self_attention_injection_changes_the_target(pipe: DiT4EditPipeline, image: np.ndarray) -> None:
    """Against the same edit with no self-attention control: each phase of Eq. 11 acts, the source stays put."""
    common = {"steps": 5, "cross": "none", "merge_ratio": 0.0, "max_corrections": 1}
    runs = {
        name: pipe.edit(image, SOURCE, "a photo of a blue dog", EditSettings(**common, **extra))
        for name, extra in {"free": {"self_blocks": ()}, "mutual": {"self_switch": 0.0}, "both": {"self_switch": 0.6}}.items()
    }
    targets = [r.target_latents for r in runs.values()]
    assert all(not torch.allclose(a, b) for k, a in enumerate(targets) for b in targets[k + 1 :])
    assert all(torch.equal(r.source_latents, runs["free"].source_latents) for r in runs.values())


def test_t5_words_map_to_their_sentencepiece_tokens() -> None:
    tokenizer = tiny_t5_tokenizer()
    tokens = prompt_tokens(tokenizer, "a zebra, on  the sky", 16)
    pieces = tokenizer.convert_ids_to_tokens(list(tokens.ids))
    assert tokens.words == ("a", "zebra,", "on", "the", "sky")  # the double space gives a lone "▁": it joins "the"
    assert [[pieces[p] for p in g] for g in tokens.groups] == [["▁a"], ["▁z", "e", "b", "r", "a", ","], ["▁o", "n"], ["▁", "▁the"], ["▁sky"]]
    assert [pieces[p] for p in tokens.eos] == ["</s>"]
    cut = prompt_tokens(tokenizer, "a zebra zebra zebra", 8)  # truncation keeps </s>; cut words get no tokens
    assert len(cut.ids) == 8 and cut.groups[-1] == () and tokenizer.convert_ids_to_tokens([cut.ids[-1]]) == ["</s>"]


def test_replace_and_refine_mappers() -> None:
    tokenizer = tiny_t5_tokenizer()
    source = prompt_tokens(tokenizer, "a red cat", 16)
    target = prompt_tokens(tokenizer, "a red zebra", 16)
    mapper = replace_mapper(source, target, 16)
    cat, zebra = source.groups[2], target.groups[2]
    assert len(cat) == 1 and len(zebra) == 5
    assert torch.allclose(mapper[cat[0], list(zebra)], torch.full((5,), 0.2))  # one source token spread over five
    assert mapper[0, 0] == 1 and mapper[1, 1] == 1 and mapper[source.eos[0], target.eos[0]] == 1
    assert torch.allclose(mapper.sum(1)[: len(source.ids)], torch.ones(len(source.ids)))
    with pytest.raises(ValueError):
        replace_mapper(source, prompt_tokens(tokenizer, "a red cat on a mat", 16), 16)
    longer = prompt_tokens(tokenizer, "a red fluffy cat", 16)
    index, alpha = refine_mapper(source, longer, 16)
    fluffy = longer.groups[2]
    assert alpha[list(fluffy)].sum() == 0  # inserted tokens keep their own maps
    assert index[longer.groups[3][0]] == source.groups[2][0] and alpha[longer.groups[3][0]] == 1
    assert index[longer.eos[0]] == source.eos[0] and alpha[len(longer.ids):].sum() == 0


def test_replace_with_different_word_counts_is_refused(pipe: DiT4EditPipeline, image: np.ndarray) -> None:
    with pytest.raises(PromptMismatch):
        pipe.edit(image, SOURCE, "a photo of a red cat on a mat", EditSettings(steps=2, cross="replace"))
    assert pipe.edit(image, SOURCE, "a photo of a red cat on a mat", EditSettings(steps=2, max_corrections=0)).cross == "refine"


# --- patch merging ---------------------------------------------------------------------------------


def test_merge_ratio_zero_is_bit_identical_to_no_merging() -> None:
    model = tiny_pixart_transformer(3, patch_size=2)
    generator = torch.Generator().manual_seed(0)
    latents, text = torch.randn(4, 4, 8, 8, generator=generator), torch.randn(4, 16, 32, generator=generator)
    kwargs = {"encoder_hidden_states": text, "timestep": torch.tensor([500] * 4), "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}
    with torch.no_grad():
        plain = model(latents, **kwargs).sample
        controller = AttentionController()
        install(model, controller)
        controller.configure(EditControl(merge_ratio=0.0, merge_seed=5))
        controller.begin(CallLayout(branches=2, rows=2, grid=(4, 4), step=0))
        unmerged = model(latents, **kwargs).sample
        controller.configure(EditControl(merge_ratio=0.5, merge_seed=5))
        merged = model(latents, **kwargs).sample
        uninstall(model)
        again = model(latents, **kwargs).sample
    assert torch.equal(unmerged, plain) and torch.equal(again, plain)
    assert not torch.allclose(merged, plain)


def test_merging_averages_matched_tokens_and_unmerging_spreads_them_back() -> None:
    parts = partition(4, 4, torch.Generator().manual_seed(0))
    assert parts is not None and parts.destinations.numel() == 4 and parts.sources.numel() == 12
    tokens = torch.randn(1, 16, 8, generator=torch.Generator().manual_seed(1))
    tokens[0, parts.sources[:3]] = tokens[0, parts.destinations[0]].clone()  # three sources identical to a destination
    plan = bipartite_matching(tokens, parts, ratio=3 / 16)
    assert plan is not None
    merged = plan.merge(tokens)
    assert merged.shape == (1, 13, 8)
    assert torch.allclose(plan.unmerge(merged), tokens, atol=1e-6)  # merging identical tokens loses nothing
    both = plan.repeat(2)  # the target branch reuses the source's matching
    assert torch.equal(both.merge(torch.cat([tokens, tokens]))[1], merged[0])
    assert bipartite_matching(tokens, parts, ratio=0.0) is None and partition(1, 5, torch.Generator()) is None


# --- masks and determinism -------------------------------------------------------------------------


def test_outside_a_hard_mask_the_target_follows_the_source_trajectory(pipe: DiT4EditPipeline, image: np.ndarray) -> None:
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:16] = 255  # latent cells (1..2, 1), 8-px aligned
    settings = EditSettings(steps=6, guidance=3.0, merge_ratio=0.5)
    result = pipe.edit(image, SOURCE, "a photo of a blue dog", settings, mask=mask, seed=2, keep_trajectory=True)
    outside = torch.ones(1, 4, 4, 4, dtype=torch.bool)
    outside[..., 1:3, 1] = False
    assert result.blended and result.trajectory is not None
    for i, latents in enumerate(result.trajectory):
        assert torch.equal(latents[outside], result.inversion.trajectory[i + 1][outside])
    assert torch.equal(result.target_latents[outside], result.encoded[outside])
    assert not torch.equal(result.target_latents[~outside], result.encoded[~outside])


def _stage(**params: object) -> Dit4EditStage:
    values = {"checkpoints": [{"model": "tiny", "max_pixels": 64 * 64}], "text_model": "tiny", "sizes": ["32x32"], "steps": 4,
              "merge_ratio": 0.5, **params}
    return Dit4EditStage(Dit4EditParams.model_validate(values), BuildContext("dit4edit", "test", 0, tiny=True))


def _sample(index: int = 0, size: tuple[int, int] = (32, 32)) -> Sample:
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    picture = np.stack([x * 5 % 256, y * 7 % 256, np.full_like(x, 30 * index)], -1).astype(np.uint8)
    return Sample(id=sample_id("dit4edit", index), index=index, source_ref=f"item{index}", source_image=picture,
                  source_caption=SOURCE, target_caption="a photo of a blue dog")


def test_the_same_seed_gives_the_same_bytes_and_provenance_records_it() -> None:
    first = _stage()([_sample()])[0]
    second = _stage()([_sample()])[0]
    assert first.alive and first.branch == "dit4edit"
    assert first.target_image.tobytes() == second.target_image.tobytes()
    recorded = first.provenance["dit4edit"]
    assert recorded["seeds"]["merge"] == first.seed("dit4edit-merge")
    assert recorded["inversion"]["reconstruction_error"] == pytest.approx(first.scores["dit4edit_inversion_error"], abs=1e-7)
    other = _sample()
    other.id = sample_id("dit4edit", 99)  # another sample: another merge seed, other bytes
    assert _stage()([other])[0].target_image.tobytes() != first.target_image.tobytes()


def test_the_stage_fits_sizes_masks_and_rejects_what_it_cannot_edit() -> None:
    wide = _sample(1, size=(48, 30))
    wide.mask = np.zeros((30, 48), np.uint8)
    wide.mask[5:20, 10:30] = 255
    no_caption = _sample(2)
    no_caption.target_caption = None
    out = _stage(sizes=["32x32", "64x32"], mask_blend=True)([wide, no_caption])
    assert out[0].alive and out[0].source_image.shape == (32, 64, 3) == out[0].target_image.shape
    assert out[0].mask.shape == (32, 64) and out[0].provenance["dit4edit"]["mask_blend"] is True
    assert out[1].reject is not None and out[1].reject.reason.startswith("missing-input")
    assert fit_size(2048, 1024, ["512x512", "2048x1024", "1024x2048"], 16) == (2048, 1024)
    assert fit_size(1000, 700, ["source"], 16) == (992, 688)
    assert fit_size(1024, 2048, ["1024x2048"], 8, tiny=True) == (32, 64)
    with pytest.raises(ValueError):
        Dit4EditParams.model_validate({"sizes": ["1024*2048"]})


def test_t5_runs_once_per_prompt_and_can_be_freed() -> None:
    encoder = PromptEncoder(lambda: tiny_t5(1), CPU, "free")
    first = encoder.encode(["", SOURCE, SOURCE], 16)
    assert encoder.calls == 2 and encoder.text.encoder is None  # freed after encoding
    again = encoder.encode([SOURCE, "a photo of a blue dog"], 16)
    assert encoder.calls == 3 and torch.equal(again[0][0], first[1][0])


@pytest.mark.slow
def test_the_recipe_builds_tiny(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """recipes/dit4edit.yaml end to end on the twins: template answers, grounding, DiT4Edit, filters."""
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    from crispedit.cli import main
    from tests.helpers.recipes import REPO

    out = tmp_path / "dit4edit"
    assert main(["build", str(REPO / "recipes" / "dit4edit.yaml"), "--tiny", "--runner", "local", "--out", str(out), "--no-progress"]) == 0
    rows = pq.read_table(sorted((out / "data").glob("*.parquet"))).to_pylist()
    assert rows and all(row["branch"] == "dit4edit" for row in rows)
    for row in rows:
        source = np.array(Image.open(io.BytesIO(row["source_image"]["bytes"])))
        target = np.array(Image.open(io.BytesIO(row["target_image"]["bytes"])))
        assert source.shape == target.shape and max(source.shape[:2]) <= 64
        assert row["dit4edit_inversion_error"] is not None and '"dit4edit"' in row["provenance"]


def test_checkpoints_load_from_a_diffusers_layout_with_their_dtype(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The non-tiny path: transformer/, vae/, scheduler/, text_encoder/, tokenizer/ read by from_pretrained."""
    from crispedit.dit4edit.models import load_pixart, load_text
    from crispedit.models.spec import ModelSpec

    models, text = tiny_pixart(0), tiny_t5(1)
    models.transformer.save_pretrained(tmp_path / "transformer")
    models.vae.save_pretrained(tmp_path / "components" / "vae")
    models.scheduler.save_pretrained(tmp_path / "components" / "scheduler")
    text.encoder.save_pretrained(tmp_path / "components" / "text_encoder")
    text.tokenizer.save_pretrained(tmp_path / "components" / "tokenizer")
    loaded = load_pixart(ModelSpec(id=str(tmp_path), dtype="bfloat16"), ModelSpec(id=str(tmp_path / "components")))
    assert loaded.transformer.dtype == torch.bfloat16 and loaded.vae.dtype == torch.float32
    assert loaded.scheduler.config.beta_end == models.scheduler.config.beta_end
    loaded_text = load_text(ModelSpec(id=str(tmp_path / "components")))
    words = prompt_tokens(loaded_text.tokenizer, "a zebra", 16)
    assert words == prompt_tokens(text.tokenizer, "a zebra", 16)
    pipe = DiT4EditPipeline(loaded, PromptEncoder(lambda: loaded_text, CPU, "cpu"), 16, CPU)
    result = pipe.edit(np.zeros((32, 32, 3), np.uint8), SOURCE, "a photo of a blue dog", EditSettings(steps=2, max_corrections=0))
    assert result.target.shape == (32, 32, 3)
