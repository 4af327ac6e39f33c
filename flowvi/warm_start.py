"""A Gaussian approximation of the target, where a reverse-KL fit starts (``fit(init="auto")``).

Laplace approximations along an L-BFGS path, the best by ELBO: the idea of
Pathfinder (Zhang, Carpenter, Gelman and Vehtari 2022, "Pathfinder: Parallel
quasi-Newton variational inference"), with the exact Hessian at a few points
of the path in place of the L-BFGS estimate. L-BFGS (optax) climbs the log
density from the start point; at `CHECKPOINTS` iterates spread along its path
the Gaussian ``N(x_t + H_t^{-1} g_t, H_t^{-1})`` is formed from the gradient and Hessian there, and the one
with the largest ELBO wins. Near a mode that is the Laplace approximation; on a
funnel, where the climb runs into the neck and the mode degenerates, an earlier
point of the path wins, as in Pathfinder.

Why not the alternatives: a Laplace approximation at the end of the climb
alone fails where the mode degenerates; a few hundred steps of Gaussian VI
inherit the very problem the warm start is for (stochastic gradient steps of
one rate across scales that differ by 10^4). Pathfinder's own inverse-Hessian
estimate is cheaper in high dimension, but its rank-limited factor misses
curvature L-BFGS never explored; the exact Hessian costs ``dim`` Hessian-vector
products per checkpoint, so above `MAX_DENSE_DIM` coordinates the warm start
is skipped.

Several runs (`spread_starts`): run 0 climbs from the origin as above; the
other runs climb from points of a wide initial draw, so that runs of a
multimodal target start on different modes. ``POOL_PER_RUN * num_runs``
points are drawn, ``init_spread * N(0, I)`` in the target's coordinates (the
first is the origin), L-BFGS climbs from each, and the runs take the climbs
whose end points lie farthest apart (greedy farthest-point selection from the
origin's climb); each run's Gaussian is then found from its own start point.
On a unimodal target every climb ends at the same mode and every run starts
from the same Gaussian, as with one start.

Badly scaled targets are the point, so the Gaussian is kept in a factored form
that float32 resolves: ``H = D^{-1} Q W Q^T D^{-1}`` with ``D`` the coordinates'
scales (from the Hessian's diagonal) and ``Q W Q^T`` the eigendecomposition of
the unit-diagonal ``D H D``; the Gaussian's square root is then
``D Q W^{-1/2}`` (`flowvi.flows.whitened`). Negative curvature (a saddle, or
a non-concave region) is taken by magnitude, and eigenvalues are floored at
`EIGEN_FLOOR` of the largest.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flowvi.data_target import bind_data

CHECKPOINTS = 12
"""Points of the L-BFGS path (evenly spread, first and last included) where a Laplace approximation is tried."""
MAX_ITERS = 1000
"""L-BFGS iterations at most."""
MAX_DENSE_DIM = 1000
"""Above this many coordinates the dense Hessians cost too much and the warm start is skipped."""
ELBO_DRAWS = 128
"""Draws per ELBO estimate when choosing among the checkpoints (the same draws for every checkpoint)."""
EIGEN_FLOOR = 1e-6
"""Smallest eigenvalue of the rescaled Hessian kept, relative to its largest."""
REL_TOL = 1e-7
"""An L-BFGS iteration stalls when it improves the log density by less than this times ``1 + |log p|``."""
STALLS = 3
"""L-BFGS stops after this many stalled iterations in a row (or at a non-finite value)."""
POOL_PER_RUN = 8
"""Climbs per run in `spread_starts`: with 8 per run, 8 runs on 8 equally likely basins miss one
with probability about ``8 (7/8)^64 = 0.002``."""


class GaussianStart(NamedTuple):
    """A Gaussian ``N(loc, S S^T)``, ``S = diag(scale_out) @ rotation @ diag(scale_in)``, and how it was found.

    Attributes:
        loc, scale_out, scale_in: ``(dim,)``.
        rotation: ``(dim, dim)`` orthogonal.
        elbo: its ELBO estimate (`ELBO_DRAWS` draws).
        iterations: L-BFGS iterations run.
        checkpoint: the path iterate it was formed at (0 = the start point).
        seconds: wall time of the whole search, compilation included.
    """

    loc: np.ndarray
    scale_out: np.ndarray
    rotation: np.ndarray
    scale_in: np.ndarray
    elbo: float
    iterations: int
    checkpoint: int
    seconds: float

    def whitening(self) -> dict:
        """The parameters of `flowvi.flows.whitened`'s fixed map."""
        return {"loc": self.loc, "scale_out": self.scale_out, "rotation": self.rotation, "scale_in": self.scale_in}

    def covariance(self) -> np.ndarray:
        """``(dim, dim)`` covariance ``S S^T``."""
        root = self.scale_out[:, None] * self.rotation * self.scale_in[None, :]
        return root @ root.T

    def summary(self) -> dict:
        """JSON-ready record for ``post.settings["warm_start"]``."""
        return {"method": "laplace_path", "elbo": self.elbo, "iterations": self.iterations,
                "checkpoint": self.checkpoint, "seconds": round(self.seconds, 3)}


def gaussian_start(log_density: Callable, dim: int, key: jax.Array, start: jax.Array | None = None,
                   data=None) -> tuple[GaussianStart | None, str]:
    """The best Gaussian along an L-BFGS climb of `log_density` (see the module docstring).

    Args:
        log_density: ``x: (dim,) -> scalar``, or ``(x, data) -> scalar`` with `data`.
        dim: number of coordinates.
        key: PRNG key of the ELBO draws.
        start: ``(dim,)`` where the climb starts; default the origin.
        data: arrays passed to `log_density` as arguments of the compiled climb
            (not baked into it as constants: at 10^6 rows that halves its compile time).

    Returns:
        ``(start, why)``: the Gaussian (None when none was found) and, when None,
        why not in words.
    """
    if dim > MAX_DENSE_DIM:
        return None, f"dim={dim} is above {MAX_DENSE_DIM}, where dense Hessians cost too much"
    began = time.perf_counter()
    x0 = jnp.zeros(dim) if start is None else jnp.asarray(start, jnp.result_type(float))
    path, values, iterations = _climb(log_density, x0, data)
    iterations = int(iterations)
    if not np.isfinite(float(values[0])):
        return None, "the log density is not finite at the start point"
    picks = np.unique(np.round(np.linspace(0, iterations, CHECKPOINTS)).astype(int))
    picks = np.concatenate([picks, np.full(CHECKPOINTS - picks.size, picks[-1])])
    elbos, locs, outs, rots, ins = map(np.asarray, _laplace_at(log_density, path[picks], key, data))
    elbos = np.where(np.isfinite(elbos), elbos, -np.inf)
    best = int(np.argmax(elbos))
    if not np.isfinite(elbos[best]):
        return None, "no Laplace approximation along the L-BFGS path, nor the standard normal, had a finite ELBO"
    if best == elbos.size - 1:
        return None, (f"the standard normal had a larger ELBO ({elbos[best]:.4g}) than every Laplace "
                      f"approximation along the L-BFGS path (best {np.max(elbos[:-1]):.4g})")
    return GaussianStart(locs[best], outs[best], rots[best], ins[best], float(elbos[best]), iterations,
                         int(picks[best // 2]), time.perf_counter() - began), ""


def spread_starts(log_density: Callable, dim: int, key: jax.Array, num_runs: int, spread: float, data=None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Start points for the climbs of `num_runs` runs, spread over the target's modes (module docstring).

    Args:
        log_density: ``x: (dim,) -> scalar``.
        dim: number of coordinates.
        key: PRNG key of the initial draw.
        num_runs: runs (>= 1).
        spread: sd of the initial draw around the origin, in the target's coordinates.
        data: as in `gaussian_start`.

    Returns:
        ``starts: (num_runs, dim)``, the chosen start points (row 0 the origin),
        and ``ends: (num_runs, dim)``, where their climbs ended.
    """
    pool = np.asarray(spread * jax.random.normal(key, (POOL_PER_RUN * num_runs, dim)), np.float64)
    pool[0] = 0.0
    # One climb at a time through the program `gaussian_start` compiles anyway (a vmapped or mapped
    # climb would be a second program to compile, which costs more than the climbs on small targets).
    ends, values = np.zeros_like(pool), np.zeros(len(pool))
    dtype = jnp.result_type(float)
    for i, x0 in enumerate(pool):
        path, trace, count = _climb(log_density, jnp.asarray(x0, dtype), data)
        ends[i], values[i] = np.asarray(path[count]), float(trace[count])
    usable = np.isfinite(values) & np.all(np.isfinite(ends), axis=1)
    usable[0] = True
    chosen = [0]
    nearest = np.linalg.norm(ends - ends[0], axis=1)
    for _ in range(1, num_runs):
        candidates = np.where(usable, nearest, -np.inf)
        candidates[chosen] = -np.inf
        pick = int(np.argmax(candidates))
        chosen.append(pick)
        nearest = np.minimum(nearest, np.linalg.norm(ends - ends[pick], axis=1))
    return pool[chosen], ends[chosen]


@functools.partial(jax.jit, static_argnums=0)
def _climb(log_density: Callable, x0: jax.Array, data=None):
    """L-BFGS on ``-log_density`` from ``x0: (dim,)``; the iterates ``(MAX_ITERS + 1, dim)``, their values, count.

    Rows past the count repeat the last iterate. The climb stops early when an
    iteration gains less than `REL_TOL` (relative) or leaves the finite values.
    """
    log_density = bind_data(log_density, data)
    loss = lambda x: -log_density(x)  # noqa: E731
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)
    path = jnp.zeros((MAX_ITERS + 1, x0.size), x0.dtype).at[0].set(x0)
    values = jnp.full(MAX_ITERS + 1, -jnp.inf, x0.dtype).at[0].set(log_density(x0))

    def keep_going(carry):
        _, _, i, _, _, stalls = carry
        return (i < MAX_ITERS) & (stalls < STALLS)

    def body(carry):
        x, state, i, path, values, stalls = carry
        value, grad = value_and_grad(x, state=state)
        updates, state = solver.update(grad, state, x, value=value, grad=grad, value_fn=loss)
        new = optax.apply_updates(x, updates)
        new_value = -optax.tree.get(state, "value")
        finite = jnp.isfinite(new_value) & jnp.all(jnp.isfinite(new)) & jnp.all(jnp.isfinite(grad))
        stalled = new_value - (-value) <= REL_TOL * (1.0 + jnp.abs(value))
        x = jnp.where(finite, new, x)
        path = path.at[i + 1].set(x)
        values = values.at[i + 1].set(jnp.where(finite, new_value, -value))
        stalls = jnp.where(finite, jnp.where(stalled, stalls + 1, 0), STALLS)
        return x, state, i + finite.astype(jnp.int32), path, values, stalls

    stalls = jnp.where(jnp.isfinite(values[0]), 0, STALLS)
    carry = (x0, solver.init(x0), jnp.zeros((), jnp.int32), path, values, stalls)
    _, _, count, path, values, _ = jax.lax.while_loop(keep_going, body, carry)
    return path, values, count


@functools.partial(jax.jit, static_argnums=0)
def _laplace_at(log_density: Callable, points: jax.Array, key: jax.Array, data=None):
    """Gaussians at ``points: (k, dim)`` and their ELBOs.

    Returns ``(elbo, loc, scale_out, rotation, scale_in)``, each with leading axis ``2k + 1``.

    Two per point, both with the point's (clipped) Hessian: centred at the
    point, and one Newton step on, ``x + H^{-1} grad`` (Pathfinder's centre);
    and last the standard normal, so that the warm start never starts worse,
    by ELBO, than ``init="standard"``. All ELBOs use the same draws.
    """
    log_density = bind_data(log_density, data)
    dim = points.shape[-1]
    noise = jax.random.normal(key, (ELBO_DRAWS, dim), points.dtype)

    def elbo(locs, scale_out, rotation, scale_in):
        """ELBOs ``(k,)`` of the Gaussians at ``locs: (k, dim)`` with one shared scale."""
        offsets = scale_out * ((noise * scale_in) @ rotation.T)
        # One flat batch of k * ELBO_DRAWS points: a vmap over the locations as well would give XLA:CPU
        # a batched program measured 1.9x slower on a 10^6-row likelihood (12 checkpoints: 6.9 s against 3.6 s).
        draws = (locs[:, None, :] + offsets[None]).reshape(-1, dim)
        entropy = jnp.sum(jnp.log(scale_out)) + jnp.sum(jnp.log(scale_in)) + 0.5 * dim * (1.0 + jnp.log(2.0 * jnp.pi))
        value = jnp.mean(jax.vmap(log_density)(draws).reshape(locs.shape[0], -1), axis=1) + entropy
        ok = (jnp.isfinite(value) & jnp.all(jnp.isfinite(locs), axis=1) & jnp.all(jnp.isfinite(rotation))
              & jnp.all(jnp.isfinite(scale_out)) & jnp.all(jnp.isfinite(scale_in)))
        return jnp.where(ok, value, -jnp.inf)

    def one(x):
        gradient = jax.grad(log_density)(x)
        precision = -jax.hessian(log_density)(x)
        precision = 0.5 * (precision + precision.T)
        diagonal = jnp.abs(jnp.diag(precision))
        scale_out = jax.lax.rsqrt(jnp.where(diagonal > 0, diagonal, 1.0))
        scaled = scale_out[:, None] * precision * scale_out[None, :]
        # LAPACK's eigensolver is never given a NaN or inf (at a degenerate point the Hessian overflows):
        # such a point gets the identity, and NaN eigenvalues rule its candidates out (ELBO -inf).
        finite = jnp.all(jnp.isfinite(scaled))
        eigenvalues, rotation = jnp.linalg.eigh(jnp.where(finite, scaled, jnp.eye(dim, dtype=scaled.dtype)))
        eigenvalues = jnp.where(finite, jnp.abs(eigenvalues), jnp.nan)
        eigenvalues = jnp.maximum(eigenvalues, EIGEN_FLOOR * jnp.max(eigenvalues))
        scale_in = jax.lax.rsqrt(eigenvalues)
        newton = x + scale_out * ((((gradient * scale_out) @ rotation) / eigenvalues) @ rotation.T)
        locs = jnp.stack([x, newton])
        return (elbo(locs, scale_out, rotation, scale_in), locs,
                jnp.stack([scale_out] * 2), jnp.stack([rotation] * 2), jnp.stack([scale_in] * 2))

    # A short climb's padded checkpoints (copies of its last iterate) are computed again: skipping them
    # under lax.cond saved 2 of 12 at 10^6 rows, but changed the Hessians' float rounding, and so every fit.
    found = jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), jax.lax.map(one, points))
    ones, eye = jnp.ones(dim, points.dtype), jnp.eye(dim, dtype=points.dtype)
    standard = (elbo(jnp.zeros((1, dim), points.dtype), ones, eye, ones)[0], jnp.zeros(dim, points.dtype), ones, eye,
                ones)
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), found, standard)
