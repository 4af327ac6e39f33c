"""Progress reporting and early stopping, both host-side between compiled chunks."""

from __future__ import annotations

import sys

import numpy as np
from tqdm.auto import tqdm


def make_progress_bar(progress: bool | None, total: int, unit: str):
    """A tqdm bar when `progress` (default: only when stderr is a terminal), else None."""
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    return tqdm(total=total, unit=unit, dynamic_ncols=True, leave=True)


class Plateau:
    """Early stopping on a smoothed loss, one decision per run.

    The smoothed loss is the mean of the finite losses seen since the last
    update (one compiled chunk). A run stops when its smoothed loss has not
    improved on its best for `patience` steps (or epochs).
    """

    def __init__(self, patience: int | None, num_runs: int):
        self.patience = patience
        self.best = np.full(num_runs, np.inf)
        self.best_at = np.zeros(num_runs, dtype=np.int64)

    def update(self, run: int, losses: np.ndarray, now: int) -> bool:
        """Record `losses` of `run` ending at step `now`; return True when the run should stop."""
        finite = losses[np.isfinite(losses)]
        if self.patience is None or finite.size == 0:
            return False
        smoothed = float(finite.mean())
        if smoothed < self.best[run]:
            self.best[run], self.best_at[run] = smoothed, now
        return now - self.best_at[run] >= self.patience
