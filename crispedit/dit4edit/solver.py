"""DPM-Solver++(2M) sampling and its inversion, with the fixed-point correction of Hong et al. 2024.

The schedule (timesteps, and the noise levels at them) is diffusers'
``DPMSolverMultistepScheduler``'s, so a checkpoint samples on the grid it ships with. The
step math is ours, written out below, because inversion must invert exactly the step the
sampler takes: the scheduler's ``step()`` is stateful and has no inverse.

Notation (DPM-Solver++ paper, data prediction): sampling runs ``y_0`` (pure noise) to
``y_n`` (clean latents) through noise levels ``sigma_0 > ... > sigma_n`` (``sigma_n`` = 0
with ``final_sigmas_type: zero``). For VP diffusion ``alpha_i = 1 / sqrt(1 + s_i^2)`` and
``sigma_i = s_i * alpha_i`` where ``s_i`` is diffusers' sigma; ``lambda_i = log(alpha_i / sigma_i)``
and ``h_i = lambda_{i+1} - lambda_i``. With ``D_i = (y_i - sigma_i eps(y_i, t_i)) / alpha_i``:

    y_{i+1} = (sigma_{i+1} / sigma_i) y_i + alpha_{i+1} (1 - e^{-h_i}) D_eff
    D_eff   = D_i                                      (first order)
    D_eff   = D_i + (D_i - D_{i-1}) / (2 r_i),  r_i = h_{i-1} / h_i   (second order, "midpoint")

Step 0 is first order (no history), and so is the final step, as in diffusers.

Inversion runs the other way: given ``y_{i+1}``, find ``y_i`` such that the step above
gives back ``y_{i+1}``. ``y_i`` appears inside the network, so this is a fixed point:

* the naive inversion evaluates the network at the known, less noisy latent ``y_{i+1}``
  (with timestep ``t_i``) and solves the step for ``y_i`` with that noise estimate frozen:
  for first-order steps this is exactly DDIM inversion;
* the correction (Hong et al. 2024, "On exact inversion of DPM-solvers") then iterates
  ``y <- y + rho * (y_{i+1} - step(y)) / L_i``, each iteration one network evaluation, until
  the step reproduces ``y_{i+1}`` to a tolerance, or a cap on corrections per step is hit.
  ``L_i`` is the step's slope in ``y`` with the noise estimate frozen, so ``rho`` = 1 is a
  Newton step on the frozen-noise linearisation (the naive inversion is the first iterate).

The second-order term needs ``D_{i-1}``, the network's output at the NOISIER latent, which
inversion has not reached yet. Hong et al. estimate it with auxiliary fine-grained DDIM
inversion; DiT4Edit reports that the solver's own history suffices. We extrapolate it
linearly in ``lambda`` from ``D_i`` and ``D_{i+1}`` (the previous inversion step's output),
which turns the inverted step into the trapezoidal rule ``D_eff = (D_i + D_{i+1}) / 2``.
Regeneration uses the real ``D_{i-1}``, so inversion is exact up to that O(h^3)-per-step
mismatch and the tolerance; the reconstruction error measures what is left.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

#: ``predict(latents, i)`` -> the (guided) noise estimate eps at timestep ``t_i``, float32.
Predict = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class Schedule:
    """The noise levels of one sampling run and the solver order at each step."""

    timesteps: tuple[int, ...]  # t_0 (noisiest) ... t_{n-1}
    alphas: tuple[float, ...]  # n + 1 values; the last is 1 when sigma_n = 0
    sigmas: tuple[float, ...]  # n + 1 values
    orders: tuple[int, ...]  # solver order of step i (y_i -> y_{i+1})

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @classmethod
    def from_scheduler(cls, scheduler: object, steps: int) -> Schedule:
        """Read the grid of a ``DPMSolverMultistepScheduler`` configured as PixArt's (dpmsolver++, epsilon)."""
        config = scheduler.config  # type: ignore[attr-defined]
        unsupported = {
            "algorithm_type": (config.algorithm_type, "dpmsolver++"),
            "prediction_type": (config.prediction_type, "epsilon"),
            "solver_type": (config.solver_type, "midpoint"),
            "thresholding": (config.thresholding, False),
            "use_flow_sigmas": (config.get("use_flow_sigmas", False), False),
        }
        wrong = {k: v for k, (v, want) in unsupported.items() if v != want}
        if wrong or config.solver_order not in (1, 2):
            raise ValueError(f"DiT4Edit's solver implements DPM-Solver++(2M) on epsilon prediction; scheduler has {wrong or config}")
        if steps < 2:
            raise ValueError("DiT4Edit needs at least 2 steps")
        scheduler.set_timesteps(steps)  # type: ignore[attr-defined]
        timesteps = tuple(int(t) for t in scheduler.timesteps)  # type: ignore[attr-defined]
        alphas, sigmas = [], []
        for s in scheduler.sigmas.double().tolist():  # type: ignore[attr-defined]
            alpha = 1.0 / math.sqrt(s * s + 1.0)
            alphas.append(alpha)
            sigmas.append(s * alpha)
        n = len(timesteps)
        final_first_order = bool(
            config.euler_at_final or (config.lower_order_final and n < 15) or config.get("final_sigmas_type", "zero") == "zero"
        )
        orders = []
        for i in range(n):
            first = config.solver_order == 1 or i == 0 or (i == n - 1 and final_first_order)
            orders.append(1 if first else 2)
        return cls(timesteps, tuple(alphas), tuple(sigmas), tuple(orders))

    # -- the step -------------------------------------------------------------------------
    def lam(self, i: int) -> float:
        return math.inf if self.sigmas[i] == 0 else math.log(self.alphas[i] / self.sigmas[i])

    def to_data(self, i: int, y: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """D_i: the clean-latent prediction from the noise estimate at level i."""
        return (y - self.sigmas[i] * eps) / self.alphas[i]

    def coefficients(self, i: int) -> tuple[float, float, float]:
        """(a, w, c) of step i: ``y_{i+1} = a y_i + w (D_i + c (D_i - D_{i-1}))``."""
        a = self.sigmas[i + 1] / self.sigmas[i]
        h = self.lam(i + 1) - self.lam(i)
        w = self.alphas[i + 1] * (1.0 - math.exp(-h))  # exp(-inf) = 0 at the final step
        c = 0.0
        if self.orders[i] == 2:
            r = (self.lam(i) - self.lam(i - 1)) / h
            c = 0.5 / r
        return a, w, c

    def update(self, i: int, y: torch.Tensor, data: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        """One DPM-Solver++ step from level i to i + 1 (``previous`` = D_{i-1}, needed at second order)."""
        a, w, c = self.coefficients(i)
        if c and previous is None:
            raise ValueError(f"step {i} is second order and needs the previous model output")
        effective = data + c * (data - previous) if c else data  # type: ignore[operator]
        return a * y + w * effective


class Sampler:
    """DPM-Solver++(2M) sampling, one step at a time, rows of a batch independently."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.previous: torch.Tensor | None = None

    def step(self, i: int, y: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        data = self.schedule.to_data(i, y, eps)
        out = self.schedule.update(i, y, data, self.previous)
        self.previous = data
        return out


def sample(schedule: Schedule, noise: torch.Tensor, predict: Predict) -> torch.Tensor:
    """Plain sampling from ``noise`` (y_0): the regeneration half of a reconstruction."""
    sampler, y = Sampler(schedule), noise
    for i in range(schedule.steps):
        y = sampler.step(i, y, predict(y, i))
    return y


@dataclass
class Inversion:
    """The inverted trajectory ``y_0 (noise) ... y_n (the encoded source)`` and what it cost."""

    trajectory: list[torch.Tensor]
    evaluations: int = 0  # network calls (each with its CFG rows)
    corrections: int = 0  # of which fixed-point corrections
    #: per step, noisiest first: the last measured RMS of step(y_i) - y_{i+1} (NaN where no correction ran)
    residuals: list[float] = field(default_factory=list)

    @property
    def noise(self) -> torch.Tensor:
        return self.trajectory[0]


def rms(x: torch.Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt())


def invert(
    schedule: Schedule,
    latents: torch.Tensor,
    predict: Predict,
    max_corrections: int = 0,
    tolerance: float = 0.0,
    relaxation: float = 1.0,
    passes: int = 1,
) -> Inversion:
    """Invert the sampler from ``latents`` (y_n) to noise (y_0); see the module docstring.

    ``max_corrections`` = 0 is the naive inversion (one network call per step). Otherwise
    each step makes up to ``max_corrections`` more calls, stopping early once the RMS of
    ``step(y_i) - y_{i+1}`` is at most ``tolerance``.

    ``passes`` > 1 (with corrections) sweeps again from the clean end: each step is re-solved
    from its previous value with ``D_{i-1}`` taken from the previous pass instead of
    extrapolated, which converges to the exact inverse of the second-order sampler (each
    sweep is a Gauss-Seidel iteration on the coupled steps).
    """
    n = schedule.steps
    trajectory: list[torch.Tensor] = [latents.float()] * (n + 1)
    outputs: list[torch.Tensor | None] = [None] * n  # D_i at the accepted y_i, from the latest pass
    result = Inversion(trajectory=trajectory)
    for sweep in range(max(1, passes) if max_corrections else 1):
        residuals: list[float] = []
        for i in reversed(range(n)):
            start = trajectory[i + 1] if sweep == 0 else trajectory[i]
            previous_output = outputs[i - 1] if sweep > 0 and i > 0 else None
            y, data, measured = _invert_step(
                schedule, i, trajectory[i + 1], start, predict, result, outputs[i + 1] if i + 1 < n else None,
                previous_output, naive_first=sweep == 0, max_corrections=max_corrections, tolerance=tolerance,
                relaxation=relaxation,
            )
            trajectory[i] = y
            outputs[i] = data
            residuals.append(measured)
        result.residuals = residuals[::-1]
    return result


def _invert_step(
    schedule: Schedule,
    i: int,
    target: torch.Tensor,
    start: torch.Tensor,
    predict: Predict,
    result: Inversion,
    later: torch.Tensor | None,
    previous_output: torch.Tensor | None,
    *,
    naive_first: bool,
    max_corrections: int,
    tolerance: float,
    relaxation: float,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Solve step i for y_i: returns y_i, the last model output D_i, and the last measured residual.

    ``D_{i-1}`` is ``previous_output`` when given (a later pass), else extrapolated from
    ``D_i`` and ``later`` (= D_{i+1}); a first-order step needs neither.
    """
    a, w, c = schedule.coefficients(i)
    frozen = c != 0 and previous_output is not None
    extrapolated = c != 0 and not frozen and later is not None
    # slope of step(y) in y with eps frozen (D = y / alpha - ...): D_i enters D_eff with weight
    # 1 at first order, 1 + c with D_{i-1} frozen, 1/2 when extrapolated (D_eff = (D_i + D_{i+1}) / 2)
    weight = 1.0 + c if frozen else (0.5 if extrapolated else 1.0)
    slope = a + w * weight / schedule.alphas[i]
    y = start
    data = start
    measured = math.nan  # the naive step alone measures nothing
    for k in range(max_corrections + 1):
        data = schedule.to_data(i, y, predict(y, i))
        result.evaluations += 1
        correcting = k > 0 or not naive_first
        result.corrections += int(correcting)
        if not c:
            previous = None
        elif frozen:
            previous = previous_output
        elif extrapolated:
            previous = _extrapolate(schedule, i, data, later)  # type: ignore[arg-type]
        else:
            previous = data  # no history at all: first order
        residual = target - schedule.update(i, y, data, previous)
        if correcting:
            measured = rms(residual)
            if measured <= tolerance:
                break  # y solves the step; data is the model output at y
        if k == max_corrections and correcting and not naive_first:
            break  # a later pass keeps y consistent with the stored output
        y = y + (relaxation if correcting else 1.0) * residual / slope
    return y, data, measured


def _extrapolate(schedule: Schedule, i: int, data: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
    """D_{i-1} estimated from D_i and D_{i+1}, linearly in lambda (the solver's own history)."""
    ratio = (schedule.lam(i) - schedule.lam(i - 1)) / (schedule.lam(i + 1) - schedule.lam(i))
    return data - ratio * (later - data)
