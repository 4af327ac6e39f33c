"""When a reverse-KL fit has converged: the stopping rule of ``fit(steps=None)``.

After Welandawe, Andersen, Vehtari and Huggins (2022), "Robust, Automated, and
Accurate Black-box Variational Inference" (RABVI): run at a fixed learning
rate until the optimisation is stationary, then lower the rate, and stop when
lowering it no longer pays. Here both tests use the loss trace (the negative
ELBO per step), whose Monte Carlo error is measured from the trace itself:

- **stationary**: the mean loss over the last ``w`` steps of the current rate
  is not below the mean over the ``w`` before by more than twice the standard
  error of that difference (from batch means, so autocorrelation counts) plus
  `MIN_GAIN` nats; ``w`` is a quarter of the steps at this rate, and at
  least ``WINDOW / sqrt(f)`` steps at rate factor ``f`` (200, 400, 800, 1600),
  so a long stage is judged over long windows and a lower rate gets the
  longer stage it needs to show a gain;
- **worth lowering the rate again**: the stationary level at the lower rate is
  better than the level at the previous rate by more than twice their
  combined standard error plus `MIN_GAIN`. Lowering stops after
  `REDUCTIONS` reductions by `FACTOR` each.

RABVI judges stationarity by R-hat of the parameter iterates and averages the
iterates; the loss is cheaper to keep and says directly what a user cares
about (is the ELBO still improving?), and the lowest rate plays the part of
averaging. Averaging the iterates of the last rate was measured and left out:
on the noisiest case at hand (a Gaussian mean, N = 10^5, ``subsample=1000``
without control variates, keys 0-3) the mean of the parameters at the chunk
ends of the last stage was 0.29, 0.30, 0.28, 0.36 posterior sds off against
the last iterate's 0.27, 0.30, 0.31, 0.35: the error is a slow drift of the
location, correlated over more steps than a stage lasts, not jitter that an
average removes. The control variates (`flowvi.control_variates`) remove it.
The rule needs the default optimiser (its rate lives in the optimiser state,
`flowvi.schedules.with_rate_factor`); with a custom one the fit stops at the
first stationary point.
"""

from __future__ import annotations

import numpy as np

WINDOW = 200
"""Steps in each of the two windows compared (at least)."""
BATCHES = 10
"""Batch means per window, for the standard error."""
MIN_GAIN = 0.01
"""Nats of ELBO per window (or per rate reduction) below which an improvement does not count."""
REDUCTIONS = 3
"""How many times the rate is lowered at most."""
FACTOR = 4.0
"""Each reduction divides the learning rate by this."""
GROWTH = 0.5
"""The windows at rate factor ``f`` are at least ``WINDOW * f ** -GROWTH`` steps.

With windows of `WINDOW` steps at every rate (``GROWTH = 0``) the rate was
lowered every 400 steps, and the stages at x1/16 and x1/64 moved the flow too
little to show a gain: on the banana (`models/banana.py`, exact sds 1 and 1.5)
the rule stopped at 1600 steps with x1's sd 10% narrow, and on eight schools
tau's sd was 0.87-0.90 of the NUTS reference (seeds 0, 1). With ``GROWTH =
0.5`` both stop at 6000 steps, the banana's sds within 5% and tau's 0.92-0.94
(``GROWTH = 1`` reached `max_steps` on the banana; `WINDOW` 150 gave tau
0.90-0.91)."""


def window_stats(losses: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error from `BATCHES` batch means of ``losses: (n,)`` (finite values only)."""
    batches = np.array([b.mean() for b in np.array_split(losses, BATCHES) if b.size])
    return float(losses.mean()), float(batches.std(ddof=1) / np.sqrt(batches.size))


class ConvergenceRule:
    """The stopping rule for `num_runs` runs, fed each run's losses chunk by chunk.

    Args:
        num_runs: runs trained together.
        can_lower: whether the learning rate can be lowered (the default optimiser).

    Attributes:
        factor: ``(num_runs,)`` the current rate factor of each run (1, 1/4, ...).
        levels: per run, ``(step, level, se)`` of each stationary stage reached.
    """

    def __init__(self, num_runs: int, can_lower: bool = True):
        self.can_lower = can_lower
        self.factor = np.ones(num_runs)
        self.levels: list[list[tuple[int, float, float]]] = [[] for _ in range(num_runs)]
        self._stage: list[list[np.ndarray]] = [[] for _ in range(num_runs)]

    def update(self, run: int, losses: np.ndarray, now: int) -> str | None:
        """Record a chunk of `run`'s losses ending at step `now`.

        Returns None to go on, ``"lower"`` when the rate was just lowered
        (`factor` holds the new one; the caller sets it in the optimiser
        state), or the stop reason in words.
        """
        self._stage[run].append(np.asarray(losses, np.float64))
        trace = np.concatenate(self._stage[run])
        trace = trace[np.isfinite(trace)]
        width = max(int(WINDOW * self.factor[run] ** -GROWTH), trace.size // 4)
        if trace.size < 2 * width:
            return None
        before, before_se = window_stats(trace[-2 * width:-width])
        level, level_se = window_stats(trace[-width:])
        if before - level > 2.0 * np.hypot(before_se, level_se) + MIN_GAIN:
            return None
        levels = self.levels[run]
        rate = f"learning rate x{self.factor[run]:.3g}"
        if levels:
            gain = levels[-1][1] - level
            noise = 2.0 * np.hypot(levels[-1][2], level_se) + MIN_GAIN
            if gain <= noise:
                levels.append((now, level, level_se))
                return (f"converged at step {now}: the ELBO was stationary at {-level:.5g} ± {level_se:.2g} and "
                        f"lowering the rate ({rate}) gained {gain:.3g} nats, within its noise ({noise:.2g})")
        levels.append((now, level, level_se))
        if not self.can_lower:
            return (f"converged at step {now}: the ELBO was stationary at {-level:.5g} ± {level_se:.2g} "
                    "(a custom optimizer: its rate is not lowered)")
        if len(levels) > REDUCTIONS:
            return (f"converged at step {now}: the ELBO was stationary at {-level:.5g} ± {level_se:.2g} at the "
                    f"lowest rate ({rate})")
        self.factor[run] /= FACTOR
        self._stage[run] = []
        return "lower"
