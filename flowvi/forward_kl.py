"""`fit_samples`: fit a flow to data by maximum likelihood (forward KL).

(The module is ``flowvi.forward_kl``; ``flowvi.fit_samples`` is the function.)
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flowvi.flows import FAMILIES, Flow, make_flow, resolve_flow, standardised, with_standardisation
from flowvi.host_loop import TrainingLoop
from flowvi.objectives import negative_log_likelihood
from flowvi.posterior import Posterior
from flowvi.schedules import choose_optimizer
from flowvi.training import guarded_step, init_state
from flowvi.validation import as_key, check_bool, check_positive_float, check_positive_int

FIT_SAMPLES_OPTIONS = ("flow", "key", "context", "max_epochs", "patience", "batch_size", "learning_rate", "optimizer",
                       "validation_fraction", "progress", "max_bad_streak")


def check_data(data) -> np.ndarray:
    """Require a finite 2-D float array ``(n, dim)``."""
    arr = _float_array("data", data, "(n, dim)")
    if arr.ndim != 2:
        raise ValueError(f"data must be 2-D with shape (n, dim), got shape {arr.shape}.")
    if arr.shape[0] < 2 or arr.shape[1] < 1:
        raise ValueError(f"data needs at least 2 rows and 1 column, got shape {arr.shape}.")
    _check_finite_rows("data", arr, "; remove or impute them first.")
    return arr


def check_context_rows(context, n: int) -> np.ndarray:
    """Require a finite float array ``(n, context_dim)`` (or ``(n,)``, one column): one context per row of the data."""
    arr = _float_array("context", context, "(n, context_dim)")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] < 1:
        raise ValueError(f"context must have shape ({n}, context_dim), one row per row of data, got {arr.shape}.")
    _check_finite_rows("context", arr, ".")
    return arr


def _float_array(name: str, value, shape: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array of shape {shape}: {err}") from None


def _check_finite_rows(name: str, arr: np.ndarray, advice: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ValueError(f"{name} holds {int(bad.sum())} NaN/inf value(s), in rows {rows[:5].tolist()}"
                         f"{'...' if rows.size > 5 else ''}{advice}")


def data_moments(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and sds ``(dim,)`` of ``data: (n, dim)`` in float64, for standardising.

    Raises:
        ValueError: a constant column (sd 0: the maximum-likelihood density is degenerate).

    Warns:
        UserWarning: a column whose sd is too small against its mean for float32
            draws to resolve (``sd < 1e-5 |mean|``; centre the data first).
    """
    mean = data.mean(axis=0, dtype=np.float64)
    sd = data.std(axis=0, dtype=np.float64)
    constant = np.flatnonzero(~(sd > 0))
    if constant.size:
        raise ValueError(f"data has constant column(s) {constant[:5].tolist()}: a density fitted to them is a "
                         "point mass (infinite likelihood); drop them or add the noise they were measured with.")
    coarse = np.flatnonzero(sd < 1e-5 * np.abs(mean))
    if coarse.size and jnp.result_type(float) == jnp.float32:
        warnings.warn(f"data column(s) {coarse[:5].tolist()} vary by less than 1e-5 of their mean: float32 draws "
                      "and densities there are quantised (the fit itself is done on standardised data). "
                      "Subtract the mean first, or enable float64 (jax_enable_x64).", UserWarning, stacklevel=3)
    return mean, sd


def standardise(data: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> jax.Array:
    """``(data - mean) / sd`` in float64, then as a JAX array of the default float type."""
    return jnp.asarray((np.asarray(data, np.float64) - mean) / sd, jnp.result_type(float))


@dataclasses.dataclass(frozen=True)
class _ForwardKLConfig:
    flow: Flow
    optimizer: optax.GradientTransformation
    batch_size: int
    max_bad_streak: int


@functools.partial(jax.jit, static_argnums=0)
def _train_epoch(config: _ForwardKLConfig, state, train: jax.Array, key: jax.Array):
    """One shuffled pass over `train: (n, dim)` in minibatches (the remainder is dropped)."""
    num_batches = train.shape[0] // config.batch_size
    order = jax.random.permutation(key, train.shape[0])[:num_batches * config.batch_size]
    batches = train[order].reshape(num_batches, config.batch_size, train.shape[1])
    loss_fn = functools.partial(negative_log_likelihood, flow=config.flow)

    def body(state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
        return guarded_step(state, loss, grads, jnp.array(True), config.optimizer, config.max_bad_streak)

    state, info = jax.lax.scan(body, state, batches)
    finite = jnp.isfinite(info.loss)
    # The mean over the finite batches; NaN (not 0) when every batch was non-finite.
    mean = jnp.sum(jnp.where(finite, info.loss, 0.0)) / finite.sum()
    return state, jnp.where(finite.any(), mean, jnp.nan), jnp.sum(~finite)


@functools.partial(jax.jit, static_argnums=0)
def _mean_nll(flow: Flow, params, data: jax.Array) -> jax.Array:
    return negative_log_likelihood(params, data, flow)


def fit_samples(data, *, key: jax.Array, context=None, flow: str | Flow = "maf", max_epochs: int = 100,
                patience: int | None = 10, batch_size: int = 256, learning_rate: float = 1e-3,
                optimizer: optax.GradientTransformation | None = None, validation_fraction: float = 0.1,
                progress: bool | None = None, max_bad_streak: int = 20, **flow_hyperparameters) -> Posterior:
    """Fit a flow to samples by minimising the negative log-likelihood (forward KL).

    A random `validation_fraction` of the rows is held out; training stops when
    the held-out NLL has not improved for `patience` epochs, and the parameters
    with the best held-out NLL are returned (the start included). The flow is
    fitted to the standardised data ``z = (data - mean) / sd`` (the training
    rows' moments, in float64) and returned followed by the fixed map
    ``x = mean + sd * z`` (`flowvi.flows.base.standardised`): the untrained flow
    has the data's mean and sd, for columns of any finite scale and either
    orientation. With ``context`` the flow is conditional, ``q(x | c)``: its
    conditioners take the context (standardised the same way), and the result's
    `Posterior.sample`, `Posterior.log_prob` and `Posterior.given` take a
    ``context=``. Families whose density at a new point is not one pass
    (``iaf``, ``bnaf``) are used inverted (data to noise, ``inverted=True``), so
    training costs one pass per batch; sampling them then costs what their
    inverse costs.

    Args:
        data: array ``(n, dim)``, finite, no constant column.
        key: PRNG key; the same key gives the same fit.
        context: ``(n, context_dim)`` finite, the context of each row (conditional density
            estimation: e.g. simulated parameters beside their data summaries); None for ``q(x)``.
        flow: family name or `flowvi.flows.Flow` (default ``"maf"``: one-pass density).
        max_epochs: maximum passes over the training rows.
        patience: epochs without held-out improvement before stopping (None: never).
        batch_size: minibatch rows per step (capped at the training rows).
        learning_rate: Adam learning rate (with global-norm clipping), unless `optimizer`.
        optimizer: any optax GradientTransformation.
        validation_fraction: held-out fraction in ``(0, 1)``.
        progress: progress bar over epochs (default: when stderr is a terminal).
        max_bad_streak: training halts after this many non-finite steps in a row, or sooner or later
            when more than a fifth of its steps are (see `flowvi.training.guarded_step`).
        **flow_hyperparameters: passed to the flow family.

    Returns:
        A `Posterior` with ``target=None`` whose flow is the standardised family
        (``post.flow.options["standardised"]``). ``losses`` holds the training
        NLL of the data per epoch: the mean over the epoch's batches whose loss
        was finite, NaN for an epoch in which none was. ``validation_losses``
        holds the held-out NLL after each epoch (NaN where it was non-finite).

    Warns:
        RuntimeWarning: training halted or stopped on non-finite losses, or
            steps were skipped or held-out NLLs non-finite (how many).
    """
    key = as_key(key)
    data = check_data(data)
    n, dim = data.shape
    context = None if context is None else check_context_rows(context, n)
    context_dim = 0 if context is None else context.shape[1]
    if isinstance(flow, str) and context_dim:
        if flow_hyperparameters.get("context_dim", context_dim) != context_dim:
            raise ValueError(f"context_dim={flow_hyperparameters['context_dim']!r} was given, but context has "
                             f"{context_dim} columns.")
        flow_hyperparameters["context_dim"] = context_dim
    if isinstance(flow, str) and flow in FAMILIES and "inverted" not in flow_hyperparameters:
        # Orient the flow so the density of data is one pass (data -> noise).
        flow_hyperparameters["inverted"] = make_flow(flow, dim, **flow_hyperparameters).inverse_cost != "one pass"
    flow = resolve_flow(flow, dim, flow_hyperparameters, FIT_SAMPLES_OPTIONS)
    if flow.context_dim != context_dim:
        raise ValueError(f"flow has context_dim={flow.context_dim} but context has {context_dim} columns"
                         f"{' (no context was given)' if context is None else ''}.")
    if flow.inverse_cost == "numerical":
        raise ValueError(f"flow={flow.name!r} evaluates densities by numerical root finding, which has no "
                         "useful gradient; fit samples with flow='bnaf' (oriented automatically) or "
                         "make_flow('bnaf', dim, inverted=True).")
    if flow.options.get("standardised", False):
        raise ValueError("flow is already standardised (the flow of an earlier fit_samples result); pass its "
                         "family name, or make_flow(name, dim, ...) without standardised=True.")
    max_epochs = check_positive_int("max_epochs", max_epochs)
    batch_size = check_positive_int("batch_size", batch_size)
    max_bad_streak = check_positive_int("max_bad_streak", max_bad_streak)
    if patience is not None:
        patience = check_positive_int("patience", patience)
    if progress is not None:
        check_bool("progress", progress)
    validation_fraction = check_positive_float("validation_fraction", validation_fraction)
    if not validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}.")
    custom_optimizer = optimizer is not None
    optimizer = choose_optimizer(optimizer, learning_rate, decay=False)

    split_key, init_key, epoch_key = jax.random.split(key, 3)
    order = np.asarray(jax.random.permutation(split_key, n))
    n_val = max(1, int(round(n * validation_fraction)))
    if n - n_val < 2:
        raise ValueError(f"data has {n} rows: too few to hold out {validation_fraction:.0%} for validation "
                         "and train on at least 2.")
    mean, sd = data_moments(data[order[n_val:]])
    val, train = standardise(data[order[:n_val]], mean, sd), standardise(data[order[n_val:]], mean, sd)
    context_moments = (None, None)
    if context is not None:
        # The conditioners see the standardised context; its rows travel with the data's.
        c_mean = context[order[n_val:]].mean(axis=0)
        c_sd = context[order[n_val:]].std(axis=0)
        c_sd = np.where(c_sd > 0, c_sd, 1.0)  # a constant context column is harmless: it is centred to 0
        context_moments = (c_mean, c_sd)
        val = jnp.concatenate([val, standardise(context[order[:n_val]], c_mean, c_sd)], axis=1)
        train = jnp.concatenate([train, standardise(context[order[n_val:]], c_mean, c_sd)], axis=1)
    # NLL of x = NLL of z + sum(log sd): the log-determinant of the fixed standardising map.
    log_det = float(np.sum(np.log(sd)))
    config = _ForwardKLConfig(flow, optimizer, min(batch_size, train.shape[0]), max_bad_streak)

    start = time.perf_counter()
    # Every layer starts at the identity, so the untrained flow is N(0, I): the standardised data's moments.
    params = flow.init(init_key)
    state = init_state(params, optimizer)
    best_params, best_val = params, float(_mean_nll(flow, params, val))
    best_epoch = 0
    train_losses, val_losses = [], []
    with TrainingLoop("flowvi.fit_samples", 1, max_epochs, "epoch", patience, progress,
                      f"completed all {max_epochs} epochs") as loop:
        for epoch in range(max_epochs):
            state, train_loss, bad_batches = _train_epoch(config, state, train, jax.random.fold_in(epoch_key, epoch))
            train_loss, val_loss = float(train_loss) + log_det, float(_mean_nll(flow, state.params, val))
            train_losses.append(train_loss)
            val_losses.append(val_loss + log_det if np.isfinite(val_loss) else np.nan)
            if np.isfinite(val_loss) and val_loss < best_val:
                best_params, best_val, best_epoch = state.params, val_loss, epoch + 1
            loop.report(epoch + 1, f"train NLL {train_loss:.4g}  held-out NLL {val_losses[-1]:.4g}")
            if bool(state.halted):
                loop.stop(0, f"stopped in epoch {epoch + 1}: the loss or gradient was non-finite at too many "
                             f"steps ({max_bad_streak} in a row, or more than a fifth of the recent ones); the "
                             "parameters are those with the best held-out NLL", warn=True)
            elif not np.isfinite(train_loss):
                loop.stop(0, f"stopped in epoch {epoch + 1}: the loss was non-finite in every batch of the "
                             f"epoch ({int(bad_batches)} batches); the parameters are those with the best "
                             "held-out NLL", warn=True)
            elif not loop.check_plateau(0, np.array([val_loss]), epoch + 1):
                loop.check_interrupt(epoch + 1)
            if not loop.active[0]:
                break
    reason = loop.reasons[0]
    _warn_about_training(reason, int(state.skipped), int(state.step), val_losses)
    result_flow = standardised(flow)
    best_params = with_standardisation(best_params, mean, sd, *context_moments)
    return Posterior(
        flow=result_flow, params=jax.tree.map(lambda a: a[None], best_params), target=None,
        losses=np.asarray(train_losses), stop_reasons=[reason], steps_run=np.array([len(train_losses)]),
        skipped_steps=np.array([int(state.skipped)]), fit_seconds=time.perf_counter() - start,
        settings={"objective": "forward_kl", "max_epochs": max_epochs, "batch_size": config.batch_size,
                  "learning_rate": None if custom_optimizer else learning_rate, "patience": patience,
                  "validation_fraction": validation_fraction, "num_runs": 1, "best_epoch": best_epoch,
                  "context_dim": context_dim},
        validation_losses=np.asarray(val_losses))


def _warn_about_training(reason: str, skipped: int, steps: int, val_losses: list[float]) -> None:
    """Warn (once, after training) about what a stop reason alone does not say.

    Steps skipped for non-finite values and held-out NLLs that were non-finite.
    Halts and all-non-finite epochs already warned with their stop reason.
    """
    if reason.startswith("stopped in epoch"):
        return
    notes = []
    if skipped:
        notes.append(f"{skipped} of {steps} steps were skipped because the loss or gradient was non-finite")
    bad_val = int(np.sum(~np.isfinite(val_losses)))
    if bad_val:
        notes.append(f"the held-out NLL was non-finite after {bad_val} of {len(val_losses)} epochs")
    if notes:
        warnings.warn(f"flowvi.fit_samples {reason}, but {'; '.join(notes)}. Try a smaller learning_rate.",
                      RuntimeWarning, stacklevel=3)
