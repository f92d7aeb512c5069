"""The resource plan fits every step's minimum into the cluster, as Ray Data will reserve it."""

from __future__ import annotations

from pathlib import Path

import pytest

from crispedit.engine.plan import ray_steps, resource_plan
from crispedit.engine.resources import PlanError, StepReservation, make_plan, reserved
from crispedit.recipe import load_plan

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
