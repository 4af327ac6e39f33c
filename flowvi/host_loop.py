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
