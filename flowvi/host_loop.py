"""The host side of training, shared by `fit` and `fit_samples`.

Between compiled chunks (or epochs) the host updates the progress report,
decides early stopping, records why each run stopped, and turns a Ctrl-C into
a clean stop: the first SIGINT asks the loop to stop at the end of the current
chunk and return what it has ("interrupted at step N"); a second one aborts.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import warnings

import numpy as np

from flowvi.progress import Plateau, Progress


class TrainingLoop:
    """Progress, plateau stopping, stop reasons and interrupts for `num_runs` runs.

    Use as a context manager around the loop over chunks; it installs its
    SIGINT handler only in the main thread and restores the previous one on exit.

    Args:
        who: the caller's name for messages, e.g. ``"flowvi.fit"``.
        num_runs: independent runs trained together.
        total: steps (or epochs) planned.
        unit: ``"step"`` or ``"epoch"``.
        patience: plateau patience (None: never stop early).
        progress: show progress (None: only when stderr is a terminal).
        done_reason: the stop reason of a run that ran to the end.

    Attributes:
        active: ``(num_runs,)`` bools, runs still training.
        reasons: why each run stopped, in words.
    """

    def __init__(self, who: str, num_runs: int, total: int, unit: str, patience: int | None,
                 progress: bool | None, done_reason: str):
        self.who = who
        self.unit = unit
        self.patience = patience
        self.active = np.ones(num_runs, bool)
        self.reasons = [done_reason] * num_runs
        self.plateau = Plateau(patience, num_runs)
        self.progress = Progress(progress, total, unit)
        self._interrupts = 0
        self._previous_handler = None
        self.started = time.perf_counter()

    def __enter__(self) -> TrainingLoop:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        self.progress.compiling()
        return self

    def __exit__(self, *exc) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
        self.progress.close()

    def _on_sigint(self, signum, frame) -> None:
        self._interrupts += 1
        if self._interrupts > 1:
            raise KeyboardInterrupt
        print(f"\n{self.who}: interrupted; stopping at the end of this {self.unit} chunk "
              "(press Ctrl-C again to abort)", file=sys.stderr, flush=True)

    @property
    def interrupted(self) -> bool:
        """True once a Ctrl-C asked the loop to stop."""
        return self._interrupts > 0

    def stop(self, run: int, reason: str, warn: bool = False) -> None:
        """Mark `run` stopped with `reason` (warn with it when `warn`)."""
        self.reasons[run] = reason
        self.active[run] = False
        if warn:
            prefix = f"{self.who} run {run}" if len(self.active) > 1 else self.who
            warnings.warn(f"{prefix} {reason}.", RuntimeWarning, stacklevel=4)

    def check_plateau(self, run: int, losses: np.ndarray, now: int) -> bool:
        """Record `losses` of `run` ending at `now`; stop the run at a plateau and return True."""
        if self.plateau.update(run, losses, now):
            self.stop(run, f"early stopping at {self.unit} {now}: the smoothed loss had not improved for "
                           f"{self.patience} {self.unit}s")
            return True
        return False

    def check_interrupt(self, now: int) -> bool:
        """After a Ctrl-C: stop every active run with "interrupted at step N", warn once, return True."""
        if not self.interrupted or not self.active.any():
            return False
        for run in np.flatnonzero(self.active):
            self.reasons[run] = f"interrupted at {self.unit} {now}"
        self.active[:] = False
        warnings.warn(f"{self.who} was interrupted at {self.unit} {now}; returning the fit so far.",
                      RuntimeWarning, stacklevel=3)
        return True

    def report(self, now: int, text: str) -> None:
        """Progress after a chunk: `now` steps done, `text` the running loss."""
        self.progress.update(now, text)


# Checks of a finished reverse-KL loss trace (negative ELBO per step, NaN/inf where skipped).

MIN_TRACE = 10
"""Finite losses a trace needs before it is judged."""


def _start_and_end(trace: np.ndarray) -> tuple[float, np.ndarray] | None:
    """The first finite loss (the untrained flow's) and the last tenth of the finite ones (5 to 100)."""
    finite = np.asarray(trace, np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size < MIN_TRACE:
        return None
    width = int(np.clip(finite.size // 10, 5, 100))
    return float(finite[0]), finite[-width:]


def ended_worse_than_start(trace: np.ndarray, dim: int) -> str | None:
    """A message when the run's smoothed final loss is worse than its first loss by more than its noise.

    The end is the mean of the last tenth of the finite losses (5 to 100 of
    them). The margin is four standard errors of ``end - start`` (the start is
    one Monte Carlo evaluation and the end the mean of ``w``; both spreads are
    estimated from the end's losses), plus 0.01 nats per coordinate: the
    noise floor that stochastic optimisation at the default learning rate
    leaves even when it starts at the answer (measured: 0.7 nats at dim 200 and
    15 at dim 2000 after 50 steps from an exact start), plus float32 rounding.
    A run whose parameters diverge has a spread as large as its level, so it is
    also flagged when every one of its last losses is above the start by more
    than ``10 * (|start| + dim)``. None when the trace is too short (fewer than
    10 finite losses) or fine.
    """
    found = _start_and_end(trace)
    if found is None:
        return None
    start, tail = found
    end = float(tail.mean())
    noise = float(tail.std(ddof=1)) * np.sqrt(1.0 + 1.0 / tail.size)
    margin = 4.0 * noise + 0.01 * dim + 1e-6 * abs(start)
    diverged = tail.min() > start + 10.0 * (abs(start) + dim)
    if end <= start + margin and not diverged:
        return None
    margin = min(margin, 10.0 * (abs(start) + dim))
    return (f"the run ended worse than it started: the loss (negative ELBO) went from {start:.5g} at the "
            f"first step to {end:.5g} over the last {tail.size} steps, more than the margin of {margin:.3g} "
            "that Monte Carlo noise allows. The learning rate is probably too large for this target "
            "(try a smaller learning_rate), or the fit diverged.")


def ran_away_downwards(trace: np.ndarray, dim: int) -> str | None:
    """A message when the loss fell without levelling off, far beyond its scale: an unbounded target.

    A fit of a proper target improves fastest early and levels off (the
    default learning rate also decays); against a log density that grows
    without bound the loss keeps falling. Flagged when the loss fell by more
    than ``2 * (|start| + dim)`` and the second half of the run fell at least
    half as far as the first half (measured from the first loss and the means
    of a tenth of the losses at the middle and at the end). Measured: a
    Gaussian on ``x0^4 - |x|^2 / 2`` fell 47 then 29 nats in 500 steps, a
    converging fit started 30 sd from its target 232 then 38 in 2000.
    """
    found = _start_and_end(trace)
    if found is None:
        return None
    start, tail = found
    finite = np.asarray(trace, np.float64)
    finite = finite[np.isfinite(finite)]
    end = float(tail.mean())
    middle = float(np.mean(finite[finite.size // 2 - tail.size // 2:][:tail.size]))
    if start - end <= 2.0 * (abs(start) + dim) or middle - end < 0.5 * (start - middle):
        return None
    return (f"the loss ran away: it fell from {start:.5g} to {end:.5g} and had not levelled off by the end "
            "of the run. The target's log density looks unbounded above (then the ELBO has no "
            "maximum and the fit has no answer); check it far from the origin.")
