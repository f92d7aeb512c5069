"""The resource plan fits every step's minimum into the cluster, as Ray Data will reserve it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from crispedit.engine.plan import ray_steps, resource_plan
from crispedit.engine.resources import PlanError, StepReservation, make_plan, reserved
from crispedit.recipe import StageResources, load_plan

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _cluster(cpus: float, gpus: float = 0.0) -> tuple[dict[str, float], list[dict[str, object]]]:
    resources = {"CPU": cpus, "GPU": gpus, "memory": 16 * 2**30}
    return resources, [{"Alive": True, "Resources": resources}]


def test_a_cpu_stage_between_two_model_stages_is_a_task_step() -> None:
    """style.yaml's pixel_change sits alone between style and clip_filter: a task step, not a third pool."""
    plan = load_plan(RECIPES / "style.yaml", tiny=True)
    pools = [[plan.stages[s].name for s in steps] for steps, pool in ray_steps(plan) if pool]
    assert pools == [["style"], ["clip_filter"]]


@pytest.mark.parametrize("cpus", [1.0, 2.0, 4.0, 64.0])
@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml") if p.name != "video.yaml"))
def test_every_step_gets_its_minimum_reserved(recipe: str, cpus: float) -> None:
    plan = load_plan(RECIPES / recipe, tiny=True)
    fitted = resource_plan(plan, *_cluster(cpus))
    limit = cpus - fitted.commit_cpus
    held = sum(s.minimum()[0] for s in fitted.steps) + fitted.commit_cpus
    assert held <= cpus + 1e-9
    assert reserved(list(fitted.steps), (limit, 0.0, 16.0), 0.5)[0] <= limit + 1e-9
    assert all(s.num_cpus > 0 for s in fitted.steps)


def test_gpus_that_do_not_fit_are_refused_naming_the_stage_when_sharing_is_off() -> None:
    plan = load_plan(RECIPES / "world.yaml", tiny=True)
    plan.recipe.execution.share_gpus = False
    with pytest.raises(PlanError, match=r"stage 'inpaint' needs 1 GPU\(s\).*only 0 of the cluster's 1 GPUs"):
        resource_plan(plan, *_cluster(16.0, gpus=1.0))


@pytest.mark.parametrize("recipe", ["crispedit.yaml", "world.yaml"])
def test_the_four_and_five_model_recipes_share_one_gpu(recipe: str) -> None:
    plan = load_plan(RECIPES / recipe, tiny=True)
    fitted = resource_plan(plan, *_cluster(8.0, gpus=1.0))
    pools = [s for s in fitted.steps if s.pool and s.num_gpus]
    assert len(pools) >= 4 and fitted.gpu_scale < 1
    assert sum(s.num_gpus * s.workers[0] for s in fitted.steps) <= 1.0 + 1e-9


def test_a_worker_wider_than_any_node_is_refused() -> None:
    steps = [StepReservation(("big",), True, 1.0, 2.0, None, (1, 1), 1.0)]
    with pytest.raises(PlanError, match="stage 'big' needs 2 GPUs per worker, but no node has more than 1"):
        make_plan(steps, cpus=8.0, gpus=4.0, memory_gb=16.0, node_gpus=1.0)


def test_fractional_gpus_share_one_device() -> None:
    steps = [StepReservation((f"m{i}",), True, 1.0, 0.25, None, (1, 1), 1.0) for i in range(4)]
    fitted = make_plan(steps, cpus=8.0, gpus=1.0, memory_gb=16.0)
    assert [s.num_gpus for s in fitted.steps] == [0.25] * 4 and fitted.cpu_scale == 1.0


def _pool(name: str, gpus: float, gib: float | None = None, seconds: float | None = None) -> StepReservation:
    return StepReservation((name,), True, 1.0, gpus, None, (1, 1), 1.0, gpu_memory_gb=gib, seconds_per_item=seconds, auto=True)


def test_stages_that_may_share_one_gpu_beyond_its_memory_are_refused_naming_them() -> None:
    """Four quarter-GPU actors can land on one 40 GiB device: 4 x 12 GiB does not fit, 4 x 8 GiB does."""
    steps = [_pool(n, 0.25, 12.0) for n in ("ground", "clip", "judge", "mask")]
    with pytest.raises(PlanError, match=r"stages 'ground', 'clip', 'judge', 'mask' may share one GPU.*48 GiB.*has 40 GiB"):
        make_plan(steps, cpus=8.0, gpus=1.0, memory_gb=16.0, gpu_memory_gb=40.0)
    fitted = make_plan([_pool(n, 0.25, 8.0) for n in ("ground", "clip", "judge", "mask")], cpus=8.0, gpus=1.0,
                       memory_gb=16.0, gpu_memory_gb=40.0)
    assert fitted.gpu_memory_gb == 40.0 and "40 GiB per GPU" in fitted.lines()[0]


def test_the_worst_set_of_actors_on_one_gpu_is_the_one_checked() -> None:
    """A half-GPU 30 GiB actor fits beside one quarter-GPU 8 GiB actor (38 of 40 GiB) but the plan must also
    consider two 30 GiB actors of the same pool on one device (60 GiB) once the pool may grow to two."""
    one = [replace(_pool("big", 0.5, 30.0), auto=False), replace(_pool("small", 0.25, 8.0), auto=False)]
    make_plan(one, cpus=8.0, gpus=1.0, memory_gb=16.0, gpu_memory_gb=40.0)
    two = [replace(one[0], actors=(1, 2)), one[1]]
    with pytest.raises(PlanError, match=r"stages 'big' may share one GPU: 2 x 'big' \(30 GiB at 0.5 GPU\).*60 GiB"):
        make_plan(two, cpus=8.0, gpus=2.0, memory_gb=16.0, gpu_memory_gb=40.0)


def test_a_whole_gpu_stage_wanting_more_memory_than_its_gpus_is_refused() -> None:
    with pytest.raises(PlanError, match=r"stage 'sdxl' declares 30 GiB of GPU memory per actor, but its 1 GPU\(s\) have 24 GiB"):
        make_plan([_pool("sdxl", 1.0, 30.0)], cpus=8.0, gpus=1.0, memory_gb=16.0, gpu_memory_gb=24.0)


def test_a_recipe_sharing_one_gpu_checks_the_declared_memory_against_the_stated_device() -> None:
    """crispedit.yaml's four model stages share one GPU; at 10 GiB each they fit a 80 GiB device, not a 24 GiB one."""
    plan = load_plan(RECIPES / "crispedit.yaml", tiny=True)
    execution = plan.recipe.execution
    models = [s.label for s in resource_plan(plan, *_cluster(8.0, gpus=1.0)).steps if s.pool and s.num_gpus]
    execution.stages = {name: StageResources(gpu_memory_gb=10.0) for name in models}
    execution.gpu_memory_gb = 80.0
    assert resource_plan(plan, *_cluster(8.0, gpus=1.0)).gpu_memory_gb == 80.0
    execution.gpu_memory_gb = 24.0
    with pytest.raises(PlanError, match="stages " + ", ".join(repr(n) for n in models) + " may share one GPU"):
        resource_plan(plan, *_cluster(8.0, gpus=1.0))
    assert resource_plan(plan, *_cluster(8.0, gpus=1.0), gpu_memory_gb=80.0).gpu_memory_gb == 80.0  # `crispedit plan`'s own size wins


def _mix() -> list[StepReservation]:
    """The duty-cycle benchmark's stages: a 2 s/item whole-GPU generator and three quarter-GPU light stages."""
    return [_pool("generate", 1.0, seconds=2.0), _pool("ground", 0.25, seconds=0.3),
            _pool("clip", 0.25, seconds=0.05), _pool("judge", 0.25, seconds=1.5 / 16)]


def test_declared_costs_split_whole_gpus_so_that_the_slow_stage_gets_them() -> None:
    """Without sharing, 8 GPUs: the grounder needs two actors to keep up with seven generators."""
    fitted = make_plan(_mix(), cpus=32.0, gpus=8.0, memory_gb=16.0, share_gpus=False)
    assert [s.actors for s in fitted.steps] == [(7, 7), (2, 2), (1, 1), (1, 1)]
    assert sum(s.num_gpus * s.actors[1] for s in fitted.steps) <= 8.0 and not fitted.colocated
    four = make_plan(_mix(), cpus=16.0, gpus=4.0, memory_gb=16.0, share_gpus=False)
    assert [s.actors for s in four.steps] == [(3, 3), (1, 1), (1, 1), (1, 1)]


def test_with_sharing_the_slow_stage_runs_on_every_gpu_and_the_light_ones_fit_beside_it_in_any_placement() -> None:
    fitted = make_plan(_mix(), cpus=16.0, gpus=4.0, memory_gb=16.0)
    generate, *light = fitted.steps
    # ground at 0.3 s/item runs at about half speed beside a generator: two actors keep up with four generators
    assert fitted.colocated and generate.actors == (4, 4) and [s.actors for s in light] == [(2, 2), (1, 1), (1, 1)]
    beside = sum(s.num_gpus * s.actors[1] for s in light)
    assert generate.num_gpus > 0.5  # no GPU can hold two generators...
    assert generate.num_gpus + beside <= 1.0 + 1e-9  # ...and one fits even on the GPU holding every light actor
    assert "they time-share the GPUs" in fitted.lines()[0]


def test_light_stages_that_do_not_fit_beside_the_slow_one_in_gpu_memory_get_whole_gpus_instead() -> None:
    """Co-located, one GPU may hold a generator and every light actor: 20 + 3 x 8 GiB is over 40; whole GPUs fit."""
    steps = [replace(s, gpu_memory_gb=20.0 if s.label == "generate" else 8.0) for s in _mix()]
    fitted = make_plan(steps, cpus=16.0, gpus=4.0, memory_gb=16.0, gpu_memory_gb=40.0)
    assert not fitted.colocated and [s.actors for s in fitted.steps] == [(3, 3), (1, 1), (1, 1), (1, 1)]
    assert make_plan(steps, cpus=16.0, gpus=4.0, memory_gb=16.0, gpu_memory_gb=80.0).colocated


def test_pools_without_a_cost_keep_one_actor_and_the_plan_says_which_gpus_stay_unused() -> None:
    steps = [_pool("generate", 1.0), _pool("ground", 0.25), replace(_pool("fixed", 0.5), actors=(2, 2), auto=False)]
    fitted = make_plan(steps, cpus=16.0, gpus=4.0, memory_gb=16.0)
    assert [s.actors for s in fitted.steps] == [(1, 1), (1, 1), (2, 2)]
    assert "1.75 of the 4 GPUs stay unused: declare execution.stages.NAME.seconds_per_item for generate, ground" in fitted.lines()[-1]
