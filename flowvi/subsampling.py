"""When `flowvi.fit` subsamples by default: the ``subsample="auto"`` rule.

A full-data step evaluates the likelihood of all N rows at every one of the
step's ``num_samples`` draws; a subsampled one (`flowvi.data_target`) at B
rows, plus, with the second-order control variates
(`flowvi.control_variates`), one Hessian of those B rows (about ``dim``
passes). With the control variates the subsampled fit is accurate at large N
(the noise left shrinks like ``1 / sqrt(N B)`` in the posterior's own scale),
so the only reason to keep the full data is that it is cheap. The rule: with
``subsample="auto"`` (the default) a fit subsamples ``B = DEFAULT_BATCH``
rows when all of these hold, and otherwise uses the full data:

- the target is the keyword `flowvi.Target(log_prior=, log_likelihood=,
  data=)` (a NumPyro model is only subsampled when asked: it must route its
  per-observation arrays through ``numpyro.subsample``, which flowvi cannot
  arrange for it);
- ``N >= MIN_ROWS`` (at least `MIN_RATIO` times B: below that a step of B rows
  plus the Hessian is not much cheaper than N rows, and at small N the
  posterior is less Gaussian, so the control variates remove less noise);
- the full-data step costs at least `FLOP_BUDGET` floating-point operations
  (``num_samples`` times XLA's count for one full-data value and gradient,
  from the compiled program's cost analysis: deterministic, no timing), so a
  cheap full-data fit (a likelihood of a few flops per row) keeps its exact
  gradients;
- the control variates will be used: ``control_variates`` is not False, the
  warm start found a finite centre, and ``dim <= MAX_SECOND_ORDER_DIM`` (the
  second-order form). Without them a subsampled fit at large N is posterior
  sds off (issue 20's table), so the rule never picks plain subsampling.

``subsample=None`` (or ``subsample=N``) is always the full data, and
``subsample=B`` always subsamples; ``post.settings["subsample"]`` is the B
used (None: full data) and ``post.settings["subsample_rule"]`` says why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from flowvi.control_variates import MAX_SECOND_ORDER_DIM
from flowvi.validation import check_positive_int

AUTO = "auto"
DEFAULT_BATCH = 2048
"""Rows per step when the rule subsamples."""
MIN_RATIO = 25
"""The rule subsamples only when N is at least this many times `DEFAULT_BATCH`."""
MIN_ROWS = MIN_RATIO * DEFAULT_BATCH
"""51,200 rows."""
FLOP_BUDGET = 1e8
"""Floating-point operations of a full-data step (all its draws) above which the rule subsamples.

At the 1-10 GFLOP/s a CPU core sustains on these programs this is 10-100 ms
per step, a few minutes for a fit of a few thousand steps. XLA counts 64
flops per row for a logistic regression's value and gradient at d = 10 (104 at
d = 20), so at 64 draws its full-data step passes the budget from about 24,000
rows (15,000 at d = 20), and `MIN_ROWS` decides.
"""
ELEMENT_FLOPS = 10.0
"""Flops per data element assumed when the backend gives no cost analysis."""


def check_subsample(value: Any) -> int | str | None:
    """Validate ``fit(subsample=)``: ``"auto"``, None (the full data) or a positive int."""
    if isinstance(value, str):
        if value != AUTO:
            raise ValueError(f"subsample must be 'auto', None (the full data) or a positive int, got {value!r}.")
        return value
    return None if value is None else check_positive_int("subsample", value)


def full_step_flops(log_density: Callable, data: Any, dim: int, num_samples: int) -> float:
    """Flops of one full-data step: ``num_samples`` x one value and gradient of ``log_density(x, data, None)``.

    From XLA's cost analysis of the lowered (not compiled) program (it counts a
    loop's body once, so a likelihood that loops over its rows is undercounted);
    where the backend reports none, `ELEMENT_FLOPS` per data element.
    """
    x = jax.ShapeDtypeStruct((dim,), jnp.result_type(float))
    grad = jax.jit(jax.value_and_grad(lambda x, data: log_density(x, data, None)))
    try:
        cost = grad.lower(x, data).cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        flops = float(cost["flops"])
    except Exception:  # noqa: BLE001 - no cost analysis on this backend: the fallback below
        flops = 0.0
    if not flops > 0:
        flops = ELEMENT_FLOPS * sum(a.size for a in jax.tree.leaves(data) if hasattr(a, "size"))
    return num_samples * flops


def choose_subsample(keyword_target: bool, num_data: int, flops: Callable[[], float], cv_ready: bool,
                     why_no_cv: str) -> tuple[int | None, str]:
    """The rule: ``(B, why)`` with B = `DEFAULT_BATCH` to subsample, or ``(None, why)`` for the full data.

    Args:
        keyword_target: the target is the keyword `flowvi.Target` form.
        num_data: N.
        flops: computes the full-data step's flops (`full_step_flops`; called only when needed).
        cv_ready: the second-order control variates would be used (a finite warm-start centre,
            ``control_variates`` not False, ``dim <= MAX_SECOND_ORDER_DIM``).
        why_no_cv: why they would not (when not `cv_ready`).
    """
    head = f"auto (N={num_data:,}"
    if not keyword_target:
        return None, "auto: full data (a NumPyro model is subsampled only with subsample=B)"
    if num_data < MIN_ROWS:
        return None, f"{head} is below {MIN_ROWS:,}): full data"
    cost = flops()
    if cost < FLOP_BUDGET:
        return None, f"{head}, full-data step {cost:.2g} flops, below {FLOP_BUDGET:.0e}): full data"
    if not cv_ready:
        return None, f"{head}, full-data step {cost:.2g} flops): full data, because {why_no_cv}"
    return DEFAULT_BATCH, (f"{head} >= {MIN_ROWS:,}, full-data step {cost:.2g} flops >= {FLOP_BUDGET:.0e}): "
                           f"subsample={DEFAULT_BATCH} with control variates")


def cv_readiness(control_variates: Any, center: Any, dim: int) -> tuple[bool, str]:
    """Whether the rule's subsampled fit would get the second-order control variates, and why not."""
    import numpy as np

    if control_variates is False:
        return False, "control_variates=False (plain subsampling is too noisy at large N)"
    if center is None or not np.all(np.isfinite(center)):
        return False, "the warm start found no Gaussian centre for the control variates"
    if dim > MAX_SECOND_ORDER_DIM:
        return False, (f"dim={dim} is above {MAX_SECOND_ORDER_DIM}, where the control variates are "
                       "first-order only")
    return True, ""
