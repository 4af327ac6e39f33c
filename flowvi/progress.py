"""Progress reporting and early stopping, both host-side between compiled chunks."""

from __future__ import annotations

import sys
import time

import numpy as np

# Plain progress lines (output not a terminal): one per this fraction of the run.
LINE_EVERY = 0.1


class Progress:
    """What a fit shows while it runs.

    On a terminal, a tqdm bar; its clock starts after the first chunk, so the
    rate and ETA leave out compilation. When stderr is not a terminal (piped,
    a log file, CI) and progress is asked for, a few plain lines instead: the
    first "compiling ..." and then one every 10% of the run.

    Args:
        progress: True, False, or None (a bar only when stderr is a terminal).
        total: steps (or epochs) planned.
        unit: ``"step"`` or ``"epoch"``.
    """

    def __init__(self, progress: bool | None, total: int, unit: str):
        terminal = sys.stderr.isatty()
        self.mode = None if not (terminal if progress is None else progress) else ("bar" if terminal else "lines")
        self.total, self.unit = total, unit
        self._bar = None
        self._next_line = 0.0
        self._compiled = False
        self._start = time.perf_counter()
        if self.mode == "bar":
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total, unit=unit, dynamic_ncols=True, leave=True)

    def compiling(self) -> None:
        """Say that the first chunk is being compiled (it can take many seconds)."""
        if self._bar is not None:
            self._bar.set_description_str("compiling")
        elif self.mode == "lines":
            print(f"flowvi: compiling (the first {self.unit}s include compilation) ...", file=sys.stderr,
                  flush=True)

    def update(self, now: int, text: str) -> None:
        """`now` steps done; `text` is the running loss, e.g. ``"ELBO -3.21"``."""
        if self.mode is None:
            return
        first = not self._compiled
        self._compiled = True
        if self._bar is not None:
            if first:
                self._bar.set_description_str("")
                self._bar.reset(total=self.total)  # the rate and ETA start after compilation
            self._bar.n = now
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.refresh()
            return
        fraction = now / max(self.total, 1)
        if first or fraction >= self._next_line or now >= self.total:
            elapsed = time.perf_counter() - self._start
            print(f"flowvi: {self.unit} {now}/{self.total} ({100 * fraction:.0f}%)  {text}  [{elapsed:.1f} s]",
                  file=sys.stderr, flush=True)
            self._next_line = (np.floor(fraction / LINE_EVERY) + 1) * LINE_EVERY

    def close(self) -> None:
        """Close the bar (no-op for lines)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


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
