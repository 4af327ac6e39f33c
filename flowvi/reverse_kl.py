"""`fit`: reverse-KL variational inference with a normalising flow.

(The module is ``flowvi.reverse_kl``; ``flowvi.fit`` is the function.)
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flowvi.amortised import fit_amortised
from flowvi.control_variates import check_control_variates, choose_order, with_control_variates
from flowvi.data_target import DataSpec, FullDataDensity
from flowvi.escalation import fit_escalating
from flowvi.flows import Flow, resolve_flow, whitened, with_final_affine, with_whitening
from flowvi.flows.base import identity_whitening
from flowvi.host_loop import TrainingLoop, ended_worse_than_start, ran_away_downwards
from flowvi.objectives import DATA_STREAM, check_reverse_kl_flow, negative_elbo
from flowvi.posterior import Posterior
from flowvi.schedules import choose_optimizer, has_rate_factor, with_horizon, with_rate_factor
from flowvi.sharding import Layout, check_mesh, make_layout, put, to_host
from flowvi.stopping import ConvergenceRule
from flowvi.subsampling import AUTO, check_subsample, choose_subsample, cv_readiness, full_step_flops
from flowvi.target import Target, as_target, format_point
from flowvi.tempering import Tempering, check_tempering
from flowvi.training import RECOVERY, init_state, scan_steps
from flowvi.validation import as_key, check_choice, check_nonnegative, check_positive_float, check_positive_int
from flowvi.warm_start import POOL_PER_RUN, gaussian_start, spread_starts

DEFAULT_MAX_STEPS = 10000
INITS = ("auto", "standard")
# fold_in constant that turns the fit's key into the warm start's (the other keys stay as they were).
WARM_START_STREAM = 0x5741524D

DEFAULT_CHUNK = 100


@dataclasses.dataclass(frozen=True)
class _ReverseKLConfig:
    """Everything static about a reverse-KL run; the jit cache key."""

    flow: Flow
    log_density: Callable
    optimizer: optax.GradientTransformation
    num_samples: int
    estimator: str
    chunk: int
    max_bad_streak: int
    layout: Layout | None = None
    support_penalty: bool = False
    tempering: Tempering | None = None


@functools.partial(jax.jit, static_argnums=0)
def _run_chunk(config: _ReverseKLConfig, states, run_keys, total_steps, active, data=None):
    """`scan_steps` for every run (vmapped); ``data`` are the target's data arrays (None for a plain density).

    With a layout the inputs arrive sharded (`flowvi.sharding`); the base draws
    are constrained here and the compiler partitions the rest.
    """
    layout = config.layout
    elbo = functools.partial(negative_elbo, flow=config.flow, log_density=config.log_density,
                             num_samples=config.num_samples, estimator=config.estimator, data=data,
                             draws_sharding=None if layout is None else layout.draws_sharding(),
                             support_penalty=config.support_penalty)

    def loss_fn(params, key, step):
        return elbo(params, key, beta=None if config.tempering is None else config.tempering.beta(step))

    def one_run(state, run_key, run_active):
        return scan_steps(loss_fn, config.optimizer, state, run_key, total_steps, config.chunk,
                          config.max_bad_streak, run_active)

    if run_keys.shape[0] == 1:
        # One run: no vmap. A batch axis of size 1 makes XLA:CPU pick batched
        # matmul kernels that were measured 5x slower than the plain ones.
        squeeze = functools.partial(jax.tree.map, lambda a: a[0])
        states, info = one_run(squeeze(states), run_keys[0], active[0])
        states, info = jax.tree.map(lambda a: a[None], (states, info))
    else:
        states, info = jax.vmap(one_run)(states, run_keys, active)
    if layout is not None:
        states = jax.lax.with_sharding_constraint(states, layout.state_sharding())
        info = jax.lax.with_sharding_constraint(info, layout.replicated())
    return states, info


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _init_runs(flow: Flow, optimizer: optax.GradientTransformation, num_runs: int, key: jax.Array,
               steps: jax.Array, init_spread: jax.Array, whitening: dict | None = None):
    """Initial states of all runs.

    With several runs, run r > 0 starts with its location shifted by
    ``init_spread * N(0, I)`` (in the whitened coordinates of a warm-started
    flow), so that runs can find different modes and R-hat across runs has
    something to see. `whitening` sets a `flowvi.flows.whitened` flow's fixed map.
    """
    init_key, spread_key = jax.random.split(key)
    params = jax.vmap(flow.init)(jax.random.split(init_key, num_runs))
    if whitening is not None:
        params = with_whitening(params, whitening)
    shift = init_spread * jax.random.normal(spread_key, (num_runs, flow.dim))
    params = with_final_affine(params, shift=shift.at[0].set(0.0))
    return _states(optimizer, params, steps)


def _states(optimizer: optax.GradientTransformation, params, steps: jax.Array):
    """Fresh training states of the runs' ``params`` (leading run axis), decaying over `steps` (0: no decay)."""
    return jax.vmap(lambda p: init_state(p, optimizer)._replace(
        opt_state=with_horizon(optimizer.init(p), steps)))(params)


FIT_OPTIONS = ("dim", "flow", "steps", "max_steps", "init", "num_samples", "learning_rate", "optimizer",
               "estimator", "patience", "progress", "num_runs", "key", "names", "max_bad_streak", "chunk_size",
               "mesh", "subsample", "control_variates", "init_spread", "time_budget", "contexts", "num_contexts",
               "tempering")


def fit(target: Target | Callable, dim: int | None = None, *, key: jax.Array, flow: str | Flow | None = None,
        steps: int | None = None, max_steps: int = DEFAULT_MAX_STEPS, init: str | Posterior = "auto",
        num_samples: int = 64, learning_rate: float = 5e-3,
        optimizer: optax.GradientTransformation | None = None, estimator: str = "reparam",
        patience: int | None = None, progress: bool | None = None, num_runs: int = 1,
        names: list[str] | None = None, max_bad_streak: int = 20, chunk_size: int = DEFAULT_CHUNK,
        mesh: jax.sharding.Mesh | None = None, subsample: int | str | None = "auto",
        control_variates: bool | str = "auto", init_spread: float = 1.0,
        time_budget: float | None = None, contexts=None, num_contexts: int = 16, tempering=None,
        **flow_hyperparameters) -> Posterior:
    """Fit a normalising flow to an unnormalised density by maximising the ELBO (reverse KL).

    Args:
        target: a `flowvi.Target`, or a log density ``x: (dim,) -> scalar``.
        dim: number of coordinates (required with a plain log density).
        key: PRNG key (``jax.random.key(seed)``); the same key gives the same fit.
        flow: family name (see `flowvi.flows.FAMILIES`) or a `flowvi.flows.Flow`;
            default ``"spline_coupling"`` (``"iaf"`` when ``dim == 1``).
            ``"auto"``: fit the default family, and while its k-hat is 0.7 or
            more and budget remains (`max_steps` across all stages,
            `time_budget`), deeper and wider versions of it
            (`flowvi.escalation`); the result is the stage with the best
            ELBO, and ``post.settings["stages"]`` records every stage.
        steps: None (default) trains until the stopping rule says the fit has
            converged (`flowvi.stopping`: stationary at the rate, the rate
            lowered, until lowering no longer improves the ELBO), at most
            `max_steps`; an int trains exactly that many steps, with the rate
            decaying over them. ``post.stop_reason`` says why it stopped.
        max_steps: the cap of the automatic mode (``steps=None``).
        init: where the flow starts. ``"auto"`` (default): at a Gaussian
            approximation of the target (`flowvi.warm_start`: Laplace
            approximations along an L-BFGS climb, the best by ELBO, or the
            standard normal when it is better), which becomes a fixed
            full-rank affine map after the flow (`flowvi.flows.whitened`), so
            the flow learns the non-Gaussian rest in coordinates of unit scale;
            this is what makes badly scaled and strongly correlated posteriors
            work with one learning rate. ``"standard"``: the flow's own
            initialisation, a standard normal (the behaviour before 0.4).
            A `flowvi.Posterior` from an earlier fit of this target: continue
            from its parameters (same flow; a fresh optimiser), e.g.
            ``fit(target, init=post, key=...)``.
            ``post.settings["warm_start"]`` records what was found. With
            ``num_runs > 1`` (and ``init_spread > 0``) each run has its own
            Gaussian: run 0's climb starts at the origin, the others' at the
            points of a wide draw ``init_spread * N(0, I)`` (``8 * num_runs``
            points, climbed) whose climbs ended farthest apart, so runs of a
            multimodal target start on different modes (see `init_spread`).
        num_samples: Monte Carlo batch per step.
        learning_rate: learning rate of the default optimiser (Adam with
            global-norm clipping at 10); with ``steps=N`` it decays to 2% over
            the steps (cosine), with ``steps=None`` the stopping rule lowers it
            in steps of 4. After the warm start's whitening the target has
            unit scale in every direction, so one rate suits all targets:
            5e-3 is the largest measured to be stable on every benchmark
            target. Ignored when `optimizer` is given.
        optimizer: any optax GradientTransformation.
        estimator: ``"reparam"`` or ``"stl"`` (sticking the landing; needs a flow
            whose ``log_prob`` is one pass: gaussian, couplings, maf).
        patience: stop a run early when its smoothed loss has not improved for
            this many steps; None (default) runs all steps.
        progress: show a progress bar with the running ELBO; default when
            stderr is a terminal.
        num_runs: independent fits trained together (vmapped), for R-hat-style
            checks across runs and mode coverage (`flowvi.Posterior.diagnose`);
            on a multimodal target, `flowvi.Posterior.mixture` combines them
            into one posterior with stacking weights.
        names: coordinate names (plain log density only).
        max_bad_streak: a run halts after this many non-finite steps in a row, or
            sooner or later when more than a fifth of its steps are non-finite
            (see `flowvi.training.guarded_step`). A step is non-finite when
            its loss or gradient is (or the gradient's norm overflows); it is
            skipped and the parameters roll back to the last ones whose loss was
            finite. A draw where the target is ``-inf`` is not non-finite: it
            gets zero weight (see `flowvi.objectives.negative_elbo`).
        chunk_size: steps per compiled call (host sync between chunks).
        init_spread: with ``num_runs > 1``, how far apart the runs start, so
            that independent runs can land in different modes. With
            ``init="auto"``: the sd, in the target's (unconstrained)
            coordinates, of the draw around the origin whose points the runs'
            warm-start climbs start from (`flowvi.warm_start.spread_starts`);
            set it to the scale over which modes may lie (e.g. 40 for modes
            anywhere in ``[-40, 40]^d``). Then, as with ``init="standard"``,
            runs after the first have their location moved by
            ``min(init_spread, 1) * N(0, I)`` in the whitened coordinates of
            their own warm start (at most one sd of their Gaussian: dispersed
            for R-hat, still in the basin their climb found), or by
            ``init_spread * N(0, I)`` in the target's coordinates with
            ``init="standard"`` (or where no warm start was found). 0 starts
            every run where run 0 starts.
        mesh: a 1-D `jax.sharding.Mesh` (any axis name) to spread the fit over,
            e.g. ``jax.make_mesh((jax.device_count(),), ("batch",))``; it may
            span processes after ``jax.distributed.initialize``. A target with a
            data axis is split along its data; otherwise one run's Monte Carlo
            batch is split (``num_samples`` a multiple of the mesh size), or with
            ``num_runs > 1`` the runs are (``num_runs`` a multiple of it).
            Parameters are replicated. The result equals the single-device fit
            up to floating-point reduction order. See `flowvi.sharding`.
        subsample: ``B``: evaluate each step's likelihood on a random
            minibatch of B observations, scaled by N / B (unbiased;
            doubly-stochastic VI). Needs a target with a data axis
            (`flowvi.data_target`). None (or N): the full data every step.
            ``"auto"`` (default): the rule of `flowvi.subsampling` picks
            ``B = 2048`` for a keyword `flowvi.Target` with ``N >= 51,200``
            rows whose full-data step costs at least 1e8 flops (XLA's count,
            all draws), when the second-order control variates apply (a warm
            start centre, ``control_variates`` not False, ``dim <= 200``);
            otherwise the full data. ``post.settings["subsample"]`` is the B
            used (None: full data) and ``post.settings["subsample_rule"]`` why.
        control_variates: with `subsample`, subtract from each step's
            minibatch log density its Taylor expansion around the warm start's
            centre and add back the full-data expansion, computed once
            (`flowvi.control_variates`): still unbiased, and near the
            posterior far less noisy. It costs one Hessian of the minibatch
            per step (``dim`` passes over the B rows; first-order, one
            gradient, above 200 coordinates) and the full-data expansion
            once. ``"auto"`` (default): on when the fit subsamples and the
            warm start found a Gaussian; True: required (an error when
            `subsample` is not given as a B, or there is no warm start); False: off.
            ``post.settings["control_variates"]`` says what was used.
        time_budget: with ``flow="auto"``, seconds after which no further stage
            is started (None: no limit).
        contexts: amortised fit of a family of targets (`flowvi.amortised`): ``(m,
            context_dim)`` training contexts, or a callable ``key -> (batch, context_dim)``;
            the target's ``log_density(x, c)`` then takes a context, and the result is one
            conditional flow ``q(x | c)`` (``post.given(c)``, ``post.sample(key, n, context=c)``,
            ``post.diagnose(key, context=c)``). Each step uses `num_contexts` contexts with
            `num_samples` draws each. Not with ``flow="auto"``, ``init=<Posterior>``, several
            runs, ``mesh``, ``subsample`` or ``time_budget``; there is no Gaussian warm start.
        num_contexts: contexts drawn (uniformly, with replacement) from `contexts` per step;
            a sampler's batch size replaces it.
        tempering: anneal the target (`flowvi.tempering`): ``beta0`` in (0, 1), or
            ``(beta0, num_steps)``. The first ``num_steps`` steps fit ``p~(x)^beta`` (the
            whole log density) with ``beta`` rising geometrically from ``beta0`` to 1; the
            rest fit the target. Default ``num_steps``: 3/4 of `steps`, or 1000 with the
            stopping rule, which judges only the steps after it. Helps one flow spread over
            separated modes (see the README's "Multimodal targets"). ``losses`` keeps the
            tempered steps' losses. Not with ``flow="auto"`` or ``contexts``.
        **flow_hyperparameters: passed to the flow family, e.g. ``layers=4``.

    Returns:
        A `flowvi.Posterior` whose parameters are, for each run, the last ones
        whose loss was evaluated finite (the final update is not evaluated, so
        it is not kept); ``losses`` is NaN at skipped steps.

    Warns:
        RuntimeWarning: a run halted, or skipped steps (how many, and an
            example point where the target or its gradient is non-finite, when
            draws of the returned flow show one); a run ended worse than it
            started (`flowvi.host_loop.ended_worse_than_start`); the loss ran
            away downwards, as against an unbounded target
            (`flowvi.host_loop.ran_away_downwards`).

    Raises:
        TypeError: missing key, or unknown option names.
        ValueError: a bad target (including one that is NaN or ``+inf``, or has a
            non-finite gradient, at some of the untrained flow's draws: see
            `flowvi.Target.probe`), dim or option value; a target that is
            ``-inf`` at some of those draws with ``flow="bnaf"``; a num_samples or num_runs
            that does not divide over the mesh; subsample on a target without a
            data axis or larger than its number of observations.

    Examples:
        >>> import jax, flowvi
        >>> post = flowvi.fit(lambda x: -0.5 * (x ** 2).sum(), dim=2, flow="gaussian",
        ...                   steps=200, key=jax.random.key(0))
        >>> post.sample(jax.random.key(1), 5).shape
        (5, 2)
    """
    key = as_key(key)
    target = as_target(target, dim, names)
    if contexts is not None:
        given = {"flow='auto'": isinstance(flow, str) and flow == "auto", "init=<Posterior>": not isinstance(init, str),
                 "num_runs > 1": num_runs != 1, "mesh": mesh is not None, "time_budget": time_budget is not None,
                 "subsample": subsample not in (None, AUTO), "control_variates=True": control_variates is True,
                 "tempering": tempering is not None}
        refused = [name for name, on in given.items() if on]
        if refused:
            raise ValueError(f"an amortised fit (contexts=) does not take {', '.join(refused)}.")
        if isinstance(init, str):
            check_choice("init", init, INITS)
        return fit_amortised(target, contexts, key=key, flow=flow, flow_hyperparameters=flow_hyperparameters,
                             steps=steps, max_steps=max_steps, num_contexts=num_contexts, num_samples=num_samples,
                             learning_rate=learning_rate, optimizer=optimizer, estimator=estimator,
                             patience=patience, progress=progress, max_bad_streak=max_bad_streak,
                             chunk_size=chunk_size, options=FIT_OPTIONS, train=_train, init_states=_states)
    if time_budget is not None:
        time_budget = check_positive_float("time_budget", time_budget)
        if flow != "auto":
            raise ValueError("time_budget applies to flow='auto' (the budget for trying larger flows).")
    if isinstance(flow, str) and flow == "auto":
        if tempering is not None:
            raise ValueError("tempering does not apply with flow='auto' (each stage would anneal again); name a "
                             "family, e.g. flow='spline_coupling'.")
        if flow_hyperparameters or not isinstance(init, str):
            raise ValueError("flow='auto' chooses the flow and its hyperparameters itself: leave out "
                             f"{sorted(flow_hyperparameters) or 'init=<Posterior>'} (or name a family).")
        return fit_escalating(fit, target, key, check_positive_int("max_steps", max_steps), time_budget, dict(
            steps=steps, init=init, num_samples=num_samples, learning_rate=learning_rate, optimizer=optimizer,
            estimator=estimator, patience=patience, progress=progress, num_runs=num_runs,
            max_bad_streak=max_bad_streak, chunk_size=chunk_size, mesh=mesh, subsample=subsample,
            control_variates=control_variates, init_spread=init_spread))
    previous = _check_init(init, flow, flow_hyperparameters, num_runs, target.dim)
    flow = previous.flow if previous is not None else resolve_flow(flow, target.dim, flow_hyperparameters,
                                                                    FIT_OPTIONS)
    auto_steps = steps is None
    steps = check_positive_int("max_steps" if auto_steps else "steps", max_steps if auto_steps else steps)
    num_samples = check_positive_int("num_samples", num_samples)
    num_runs = check_positive_int("num_runs", num_runs)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    max_bad_streak = check_positive_int("max_bad_streak", max_bad_streak)
    tempering = check_tempering(tempering, None if auto_steps else steps)
    if auto_steps and tempering is not None and tempering.num_steps >= steps:
        raise ValueError(f"tempering's num_steps ({tempering.num_steps}) must be below max_steps={steps}.")
    check_reverse_kl_flow(flow, estimator)
    if patience is not None:
        patience = check_positive_int("patience", patience)
    custom_optimizer = optimizer is not None
    optimizer = choose_optimizer(optimizer, learning_rate)
    mesh = check_mesh(mesh)
    subsample = check_subsample(subsample)
    auto_subsample = subsample == AUTO
    if auto_subsample:
        subsample = None  # until the rule has decided (after the warm start); the full data so far
    spec = None
    # NumPyro targets keep their own log density unless the data must be split or subsampled.
    if target.data is not None or mesh is not None or subsample is not None:
        spec = target.data_spec(subsample, 1 if mesh is None else mesh.size)
    control_variates = check_control_variates(control_variates, subsample, None if spec is None else spec.num_data,
                                              isinstance(init, str) and init == "auto")
    layout = make_layout(mesh, num_runs, num_samples, has_data=spec is not None)
    data = _place_data(spec, layout)
    if spec is None:
        report = target.probe()
    elif layout is None and subsample is None:
        report = Target(FullDataDensity(spec.log_density), target.dim).probe(data)
    else:
        probe_key = jax.random.key(0)
        log_density = jax.jit(lambda x, data: spec.log_density(x, data, probe_key))
        report = Target(lambda x: log_density(x, data), target.dim).probe()
    # Push the flow out of a zero-density region only where there is one: it costs an
    # inverse pass in steps with draws there.
    support_penalty = report.zero_density > 0
    if support_penalty and flow.inverse_cost == "numerical":
        raise ValueError(f"the target is -inf (zero density) at {report.zero_density} of {report.points} probe "
                         f"points, and flow={flow.name!r} cannot move its mass out of such a region: its density "
                         "at a given point is found by root finding, which has no gradient. Use another family "
                         "(e.g. 'spline_coupling' or 'iaf'), or a target that is finite on R^dim.")

    init_spread = check_nonnegative("init_spread", init_spread)
    start = time.perf_counter()
    horizon = jnp.asarray(0 if auto_steps else steps, jnp.int32)
    init_key, train_key = jax.random.split(key)
    if previous is not None:
        whitening, warm = None, {"continued": f"from an earlier fit ({previous.stop_reason})"}
    elif init == "auto" and flow.options.get("standardised", False):
        # A flow fitted by fit_samples already ends in its data's fixed scale map; it is not whitened twice.
        whitening, warm = None, {"skipped": "the flow is standardised (from fit_samples)"}
    elif init == "auto":
        # On one device the full data go to the climbs as arguments (not compile-time constants).
        on_data = spec is not None and layout is None and subsample is None
        whitening, warm = _warm_start(target, jax.random.fold_in(key, WARM_START_STREAM), num_runs, init_spread,
                                      FullDataDensity(spec.log_density) if on_data else None,
                                      data if on_data else None)
        if whitening is not None and not flow.options.get("whitened", False):
            flow = whitened(flow)
    else:
        whitening, warm = None, {"skipped": "init='standard'"}
    spec, subsample, subsample_why = _subsample_rule(auto_subsample, subsample, control_variates, target, spec, layout,
                                            data, whitening, num_samples)
    log_density, data, controlled = _control_variates(control_variates, target, spec, subsample, layout, data,
                                                      whitening, warm)
    config = _ReverseKLConfig(flow, target.log_density if spec is None else log_density, optimizer,
                              num_samples, estimator, min(chunk_size, steps), max_bad_streak, layout,
                              support_penalty, tempering)
    if previous is None:
        # Runs with warm starts of their own are shifted by at most one sd of their Gaussian: enough to
        # disperse them for R-hat, not enough to leave the basin their climb found.
        shift = init_spread if whitening is None or np.ndim(whitening["loc"]) == 1 else min(init_spread, 1.0)
        states = _init_runs(flow, optimizer, num_runs, init_key, horizon, jnp.asarray(shift, jnp.float32),
                            whitening)
    else:
        params = jax.tree.map(lambda a: jnp.broadcast_to(a, (num_runs, *a.shape[1:])), previous.params)
        states = jax.jit(_states, static_argnums=0)(optimizer, params, horizon)
    run_keys = jax.random.split(train_key, num_runs)
    if layout is not None:
        states, run_keys = put((states, run_keys), layout.state_sharding())
    rule = ConvergenceRule(num_runs, can_lower=has_rate_factor(states.opt_state)) if auto_steps else None
    states, losses, skipped, reasons = _train(config, states, run_keys, steps, patience, progress, num_runs, data,
                                              rule)
    annealed = 0 if tempering is None else tempering.num_steps
    if layout is not None:
        # Ordinary single-device arrays, the same on every process.
        states = jax.tree.map(jnp.asarray, to_host(states))
    _check_runs(config, states, [t[annealed:] for t in losses], skipped, reasons, data, target.dim)
    # The parameters whose loss was last evaluated finite: the final update was never evaluated.
    return Posterior(
        flow=flow, params=states.last_good, target=target, losses=_stack_ragged(losses), stop_reasons=reasons,
        steps_run=np.asarray(states.step), skipped_steps=np.asarray(states.skipped),
        fit_seconds=time.perf_counter() - start,
        settings={"objective": "reverse_kl", "steps": None if auto_steps else steps,
                  "max_steps": steps if auto_steps else None, "init": init if isinstance(init, str) else "posterior",
                  "warm_start": warm, "num_samples": num_samples,
                  "estimator": estimator, "learning_rate": None if custom_optimizer else learning_rate,
                  "num_runs": num_runs, "patience": patience, "subsample": subsample,
                  "subsample_rule": subsample_why, "control_variates": controlled,
                  "mesh": None if layout is None else f"{layout.size} devices split by {layout.mode}",
                  "tempering": None if tempering is None else dataclasses.asdict(tempering)})


def _check_init(init, flow, flow_hyperparameters: dict, num_runs: int, dim: int) -> Posterior | None:
    """The earlier fit to continue from (None for ``"auto"``/``"standard"``); errors for a bad `init`."""
    if isinstance(init, str):
        check_choice("init", init, INITS)
        return None
    if not isinstance(init, Posterior):
        raise TypeError(f"init must be 'auto', 'standard' or a flowvi.Posterior to continue from, "
                        f"got {type(init).__name__}.")
    if init.flow.dim != dim:
        raise ValueError(f"init is a fit of a {init.flow.dim}-dimensional target; this target has dim={dim}.")
    if flow is not None or flow_hyperparameters:
        same = isinstance(flow, Flow) and flow == init.flow and not flow_hyperparameters
        if not same:
            raise ValueError(f"init=<Posterior> continues that fit's flow ({init.flow.name!r} with its "
                             "hyperparameters); leave flow= and its hyperparameters out.")
    if init.num_runs not in (1, num_runs):
        raise ValueError(f"init has {init.num_runs} runs; continue it with num_runs={init.num_runs} (or 1 run "
                         f"copied to every run), not num_runs={num_runs}.")
    return init


def _warm_start(target: Target, key: jax.Array, num_runs: int = 1, init_spread: float = 0.0,
                density: Callable | None = None, data=None) -> tuple[dict | None, dict]:
    """The whitening map of the warm start and its record for ``settings["warm_start"]`` (None: none found).

    With ``num_runs > 1`` and ``init_spread > 0`` every run gets its own
    Gaussian, climbed from its own start point (`flowvi.warm_start.spread_starts`),
    and the map has a leading run axis. Run 0 starts from the origin, unless
    the climb from there found no Gaussian better than the standard normal
    (the centre of a ring of modes, say): then every run takes one of the
    spread start points. A run whose own climb found none starts at the
    standard normal moved to its start point. The record is run 0's, with every run's under ``"runs"``.
    `density` ``(x, data) -> scalar`` with its `data` replaces ``target.log_density`` (the same function).
    """
    log_density = target.log_density if density is None else density
    found, why = gaussian_start(log_density, target.dim, key, data=data)
    if num_runs == 1 or init_spread == 0:
        if found is None:
            return None, {"skipped": why}
        return found.whitening(), found.summary()
    starts, _ = spread_starts(log_density, target.dim, jax.random.fold_in(key, 1), num_runs + 1, init_spread,
                              data)
    first = 0 if found is not None else 1
    starts = starts[first:first + num_runs]
    per_run = [(found, why)] if found is not None else []
    per_run += [gaussian_start(log_density, target.dim, jax.random.fold_in(key, 2 + r), start=starts[r], data=data)
                for r in range(len(per_run), num_runs)]
    runs = [{"skipped": w} if g is None else g.summary() for g, w in per_run]
    for r, record in enumerate(runs):
        record["start"] = [round(float(v), 4) for v in starts[r][:_START_SHOWN]]
    record = {"skipped": why} if found is None else found.summary()
    record.update(runs=runs, pool=POOL_PER_RUN * (num_runs + 1), init_spread=init_spread)
    if all(g is None for g, _ in per_run):
        return None, record
    maps = [g.whitening() if g is not None else {**identity_whitening(target.dim), "loc": jnp.asarray(starts[r])}
            for r, (g, _) in enumerate(per_run)]
    dtype = jnp.result_type(float)
    return {k: jnp.stack([jnp.asarray(m[k], dtype) for m in maps]) for k in maps[0]}, record


_START_SHOWN = 8
"""Coordinates of each run's start point kept in ``settings["warm_start"]["runs"]``."""


def _subsample_rule(auto: bool, subsample: int | None, control_variates, target: Target, spec: DataSpec | None,
                    layout: Layout | None, data, whitening: dict | None, num_samples: int):
    """``(spec, subsample, why)``: with ``subsample="auto"`` the rule of `flowvi.subsampling` applied.

    `spec` and `data` are the full data's, placed; a keyword target's minibatch
    spec takes the same data, so nothing is placed again.
    """
    if not auto:
        if subsample is None or spec is None or subsample >= spec.num_data:
            return spec, subsample, "full data (given)"
        return spec, subsample, f"subsample={subsample} (given)"
    if spec is None:
        return spec, None, "auto: full data (the target has no data axis)"
    center = _reference_point(whitening)
    ready, why = cv_readiness(control_variates, center, target.dim)
    batch, rule = choose_subsample(target.data is not None, spec.num_data,
                                   lambda: full_step_flops(spec.log_density, data, target.dim, num_samples),
                                   ready, why)
    if batch is None:
        return spec, None, rule
    return target.data_spec(batch, 1 if layout is None else layout.size), batch, rule


def _reference_point(whitening: dict | None) -> np.ndarray | None:
    """The control variates' expansion point ``(dim,)``: the warm start's centre (run 0's, if each run has one)."""
    if whitening is None:
        return None
    loc = np.asarray(whitening["loc"])
    return loc if loc.ndim == 1 else loc[0]


def _control_variates(value, target: Target, spec: DataSpec | None, subsample: int | None, layout: Layout | None,
                      data, whitening: dict | None, warm: dict):
    """The fit's log density and data with the control variates when they apply, and what was used (a sentence).

    The reference point is the warm start's centre; the full-data expansion
    is computed on the placed (over a mesh, split) data.
    """
    if spec is None:
        return None, data, "off (no subsampling)"
    center = _reference_point(whitening)
    why = "; ".join(str(v) for v in warm.values()) if center is None else ""
    order, what = choose_order(value, subsample is not None and subsample < spec.num_data, center, why,
                               target.dim)
    if order is None:
        return spec.log_density, data, what
    full = target.data_spec(None, 1 if layout is None else layout.size)
    center = jnp.asarray(center, jnp.result_type(float))
    replicated = None if layout is None else layout.replicated()
    if layout is not None:
        center = put(center, replicated)
    began = time.perf_counter()
    log_density, data = with_control_variates(spec.log_density, full.log_density, data, center, order, replicated)
    jax.block_until_ready(data[1])
    return log_density, data, f"{what}; full-data expansion {time.perf_counter() - began:.2f} s"


def _place_data(spec: DataSpec | None, layout: Layout | None):
    """Put the target's data on the devices once: split along the data axis over a mesh, else on one device."""
    if spec is None:
        return None
    if layout is None:
        return jax.device_put(spec.data)
    shardings = jax.tree.map(lambda split: layout.split() if split else layout.replicated(), spec.data_axis)
    return put(spec.data, shardings)


def _train(config: _ReverseKLConfig, states, run_keys, steps: int, patience: int | None,
           progress: bool | None, num_runs: int, data=None, rule: ConvergenceRule | None = None,
           run_chunk: Callable | None = None):
    """Host loop over compiled chunks; returns final states, per-run loss and skipped-step traces, stop reasons.

    With a `rule` (``steps=None``), `steps` is the cap, and the rule stops runs
    and lowers their rates between chunks. Neither the rule nor `patience` sees
    the steps of a tempering schedule (``config.tempering``): their loss is not
    the target's. `run_chunk` is `_run_chunk` unless given (`flowvi.amortised.run_chunk`, with the same signature).
    """
    run_chunk = _run_chunk if run_chunk is None else run_chunk
    traces: list[list[np.ndarray]] = [[] for _ in range(num_runs)]
    skips: list[list[np.ndarray]] = [[] for _ in range(num_runs)]
    total = jnp.asarray(steps, jnp.int32)
    done = ("completed all steps" if rule is None else
            f"reached max_steps={steps} before the stopping rule was met (the ELBO was still improving)")
    lowered = False
    annealing = 0 if getattr(config, "tempering", None) is None else config.tempering.num_steps
    with TrainingLoop("flowvi.fit", num_runs, steps, "step", patience, progress, done) as loop:
        while loop.active.any():
            states, info = run_chunk(config, states, run_keys, total, jnp.asarray(loop.active), data)
            loss, ran, skipped, step, halted = to_host((info.loss, info.ran, info.skipped, states.step,
                                                        states.halted))
            for r in np.flatnonzero(loop.active):
                chunk = np.where(skipped[r], np.nan, loss[r])[ran[r]]  # NaN marks a skipped step
                traces[r].append(chunk)
                skips[r].append(skipped[r][ran[r]])
                if halted[r]:
                    loop.stop(r, _halt_reason(int(step[r]), np.concatenate(skips[r]), config.max_bad_streak))
                elif step[r] >= steps:
                    loop.active[r] = False
                elif step[r] - chunk.size < annealing:
                    continue  # this chunk was (partly) tempered
                elif not loop.check_plateau(r, chunk, int(step[r])) and rule is not None:
                    verdict = rule.update(r, chunk, int(step[r]))
                    if verdict == "lower":
                        lowered = True
                    elif verdict is not None:
                        loop.stop(r, verdict)
            if lowered:
                states = states._replace(opt_state=with_rate_factor(states.opt_state,
                                                                    jnp.asarray(rule.factor, jnp.float32)))
                if config.layout is not None:
                    states = put(states, config.layout.state_sharding())
                lowered = False
            recent = loss[np.isfinite(loss)]
            loop.report(int(step.max()), f"ELBO {-recent.mean():.4g}" if recent.size else "ELBO nan")
            loop.check_interrupt(int(step.max()))
    losses = [np.concatenate(t) if t else np.zeros(0) for t in traces]
    skipped = [np.concatenate(t) if t else np.zeros(0, bool) for t in skips]
    return states, losses, skipped, loop.reasons


def _halt_reason(step: int, skipped: np.ndarray, max_bad_streak: int) -> str:
    """Why a run halted: how many of its last steps (since its bad score was last 0) were non-finite."""
    score, start = 0.0, 0
    for i, bad in enumerate(skipped):
        score = score + 1.0 if bad else max(score - RECOVERY, 0.0)
        if score == 0.0:
            start = i + 1
    window = skipped[start:]
    bad = int(window.sum())
    how = (f"for {bad} consecutive steps" if bad == window.size else
           f"at {bad} of its last {window.size} steps (a run halts after {max_bad_streak} in a row, or "
           "when more than a fifth of its steps are)")
    return (f"stopped at step {step}: the loss or gradient was non-finite (or too large) {how}; the parameters are "
            "the last ones whose loss was finite")


@functools.partial(jax.jit, static_argnums=(0, 3))
def _draws_and_target(config: _ReverseKLConfig, params, key: jax.Array, num: int, data=None):
    """``num`` draws of the flow, their ``log q``, and the target's value and gradient there."""
    x, log_q = config.flow.apply(params).sample_and_log_prob(seed=key, sample_shape=(num,))
    grad = jax.value_and_grad(config.log_density)
    if data is None:
        values, grads = jax.vmap(grad)(x)
    else:
        values, grads = jax.vmap(grad, in_axes=(0, None, None))(x, data, jax.random.fold_in(key, DATA_STREAM))
    return x, log_q, values, grads


_DIAGNOSE_DRAWS = 1024


def _why_non_finite(config: _ReverseKLConfig, params, data) -> str:
    """A sentence on where the non-finite values come from, with an example point when there is one."""
    if config.layout is not None:
        return "(run without mesh= to see an example point)"
    x, log_q, values, grads = map(np.asarray, _draws_and_target(
        config, params, jax.random.key(_DIAGNOSE_DRAWS), _DIAGNOSE_DRAWS, data))
    if np.all(values == -np.inf):
        return (f"The target's log density is -inf (zero density) at all {_DIAGNOSE_DRAWS} draws of the returned "
                f"flow, e.g. at x = {format_point(x[0])}: the flow has no mass where the target has.")
    finite_grad = np.all(np.isfinite(grads), axis=-1)
    with np.errstate(over="ignore"):
        huge_grad = finite_grad & ~np.isfinite(np.sqrt(np.sum(np.square(grads.astype(np.float32)), axis=-1)))
    for where, what in [(np.isnan(values), "NaN"), (values == np.inf, "+inf"),
                        (np.isfinite(values) & ~finite_grad, "finite but its gradient is not"),
                        (np.isfinite(values) & huge_grad, "finite but its gradient is too large for float32 "
                         "(norm above 1.8e19; is the target unbounded?)"),
                        (~np.isfinite(log_q) | ~np.all(np.isfinite(x), axis=-1), None)]:
        if where.any():
            i = int(np.flatnonzero(where)[0])
            count = f"{int(where.sum())} of {_DIAGNOSE_DRAWS} draws of the returned flow"
            if what is None:
                return f"The flow's own density is non-finite at {count}, e.g. x = {format_point(x[i])}."
            return f"The target's log density is {what} at {count}, e.g. at x = {format_point(x[i])}."
    return (f"The target, its gradient and the flow are finite at {_DIAGNOSE_DRAWS} draws of the returned "
            "flow, so the non-finite values came from rarer draws or from updates too large for the target "
            "(try a smaller learning_rate).")


def _check_runs(config: _ReverseKLConfig, states, losses: list[np.ndarray], skipped: list[np.ndarray],
                reasons: list[str], data, dim: int) -> None:
    """Warn, run by run, about halts, skipped steps, and loss traces that ended worse or ran away."""
    halted = np.asarray(states.halted)
    for r, (trace, skips) in enumerate(zip(losses, skipped, strict=True)):
        prefix = "flowvi.fit" if len(losses) == 1 else f"flowvi.fit run {r}"
        problems = []
        if halted[r] or skips.any():
            params = jax.tree.map(lambda a, r=r: a[r], states.last_good)
            first = (reasons[r] if halted[r] else
                     f"{int(skips.sum())} of its {skips.size} steps were skipped because the loss or gradient "
                     "was non-finite or too large (each rolled back to the last finite parameters)")
            problems.append(f"{first}. {_why_non_finite(config, params, data)}")
        for check in (ended_worse_than_start, ran_away_downwards):
            found = check(trace, dim)
            if found:
                problems.append(found)
        for problem in problems:
            warnings.warn(f"{prefix}: {problem}", RuntimeWarning, stacklevel=3)


def _stack_ragged(traces: list[np.ndarray]) -> np.ndarray:
    """One trace -> (steps,); several -> (runs, max_steps) padded with NaN."""
    if len(traces) == 1:
        return traces[0]
    out = np.full((len(traces), max(len(t) for t in traces)), np.nan)
    for i, t in enumerate(traces):
        out[i, :len(t)] = t
    return out
