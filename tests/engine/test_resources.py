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


def test_gpus_that_do_not_fit_are_refused_naming_the_stage() -> None:
    plan = load_plan(RECIPES / "world.yaml", tiny=True)
    with pytest.raises(PlanError, match=r"stage 'inpaint' needs 1 GPU\(s\).*only 0 of the cluster's 1 GPUs"):
        resource_plan(plan, *_cluster(16.0, gpus=1.0))


def test_fractional_gpus_share_one_device() -> None:
    steps = [StepReservation((f"m{i}",), True, 1.0, 0.25, None, (1, 1), 1.0) for i in range(4)]
    fitted = make_plan(steps, cpus=8.0, gpus=1.0, memory_gb=16.0)
    assert [s.num_gpus for s in fitted.steps] == [0.25] * 4 and fitted.cpu_scale == 1.0
