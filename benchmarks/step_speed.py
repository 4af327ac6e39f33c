"""Time per optimisation step: `flowvi.fit` against a bare jitted step called from Python.

For each flow family at dim 2, 10 and 50 (num_samples=64) this prints the
seconds per step of

* ``fit``: `flowvi.fit` (compiled chunks of steps under `lax.scan`, host sync
  between chunks), after a warm-up fit so compilation is excluded. The
  marginal cost per step is measured from fits of N and 2N steps; the fixed
  cost of a call (checking the target, initialising, building the Posterior)
  is reported separately as ``fit overhead``;
* ``bare``: one jitted ``value_and_grad`` + optax update, called once per step
  from a Python loop (the usual hand-written training loop);

and their ratio ``fit / bare`` (below 1: `fit` is faster). Both use the same
flow, loss, optimiser and Monte Carlo batch. Run: ``python -m benchmarks.step_speed``.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import optax

import flowvi
from flowvi.flows import make_flow
from flowvi.objectives import negative_elbo
from flowvi.schedules import default_optimizer, with_horizon

FAMILIES = [
    ("gaussian", {"covariance": "full"}),
    ("affine_coupling", {}),
    ("spline_coupling", {}),
    ("iaf", {}),
    ("maf", {}),
    ("bnaf", {}),
]


def banana(x):
    """A d-dimensional banana: x0 ~ N(0, 1), x_i | x_{i-1} ~ N(x_{i-1}^2 / 2, 1)."""
    prev = x[:-1]
    return -0.5 * (x[0] ** 2 + jnp.sum((x[1:] - 0.5 * prev ** 2) ** 2))


def _fit_seconds(flow, dim, steps, num_samples):
    kw = dict(dim=dim, flow=flow, steps=steps, num_samples=num_samples, progress=False, chunk_size=100)
    flowvi.fit(banana, key=jax.random.key(0), **kw)  # compile (cached for the timed call)
    start = time.perf_counter()
    post = flowvi.fit(banana, key=jax.random.key(1), **kw)
    jax.block_until_ready(post.params)
    return time.perf_counter() - start


def time_fit(flow, dim, steps, num_samples, repeats=1):
    """Marginal seconds per step of `fit` (from fits of `steps` and `2 * steps`) and its fixed overhead.

    With ``repeats > 1`` each fit is timed that many times and the fastest is kept (for a busy machine).
    """
    short = min(_fit_seconds(flow, dim, steps, num_samples) for _ in range(repeats))
    long = min(_fit_seconds(flow, dim, 2 * steps, num_samples) for _ in range(repeats))
    per_step = max(long - short, 0.0) / steps
    return per_step, short - steps * per_step


def time_bare(flow, dim, steps, num_samples, repeats=1):
    optimizer = default_optimizer(5e-3)

    @jax.jit
    def step(params, opt_state, key, t):
        loss_fn = functools.partial(negative_elbo, flow=flow, log_density=banana, num_samples=num_samples)
        loss, grads = jax.value_and_grad(loss_fn)(params, jax.random.fold_in(key, t))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = flow.init(jax.random.key(0))
    opt_state = with_horizon(optimizer.init(params), steps)
    key = jax.random.key(1)
    jax.block_until_ready(step(params, opt_state, key, 0))  # compile
    best = float("inf")
    for _ in range(repeats):
        p, o = params, opt_state
        start = time.perf_counter()
        for t in range(steps):
            p, o, loss = step(p, o, key, t)
        jax.block_until_ready(p)
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="2,10,50", help="comma-separated dimensions")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per measurement")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--families", default=",".join(f for f, _ in FAMILIES))
    parser.add_argument("--repeats", type=int, default=1, help="time each measurement this often, keep the fastest")
    args = parser.parse_args(argv)
    wanted = args.families.split(",")
    print(f"backend: {jax.default_backend()}, devices: {jax.device_count()}, num_samples={args.num_samples}, "
          f"steps timed={args.steps}")
    print("| family | dim | params | fit ms/step | bare ms/step | fit / bare | fit overhead ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, kw in FAMILIES:
        if name not in wanted:
            continue
        for dim in map(int, args.dims.split(",")):
            flow = make_flow(name, dim, **kw)
            t_fit, overhead = time_fit(flow, dim, args.steps, args.num_samples, args.repeats)
            t_bare = time_bare(flow, dim, args.steps, args.num_samples, args.repeats)
            print(f"| {name} | {dim} | {flow.num_params()} | {1e3 * t_fit:.3f} | {1e3 * t_bare:.3f} | "
                  f"{t_fit / t_bare:.2f} | {1e3 * overhead:.0f} |", flush=True)


if __name__ == "__main__":
    main()
