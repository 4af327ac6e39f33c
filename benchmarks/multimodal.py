"""Multimodal targets: one flow against a mixture of runs, and peers: ``python -m benchmarks.multimodal``.

``python -m benchmarks.multimodal [--targets a,b] [--methods m,n] [--seeds 5] [--steps 2000] [--quick]``

Targets with known answers (log Z, every mode and its weight):

- ``ring``: the 8-mode ring of `benchmarks.targets.ring` (sd 0.5 on radius 4), weights 1/8, log Z = 0;
- ``gmm40_2d``: 40 unit Gaussians, equal weights, means uniform in ``[-40, 40]^2`` (seed 0; the FAB
  paper's benchmark, Midgley et al. 2023), normalised;
- ``gmm40_10d``: the same in 10 dimensions (means uniform in ``[-40, 40]^10``, seed 0);
- ``manywell8d``: a product of 8 one-dimensional double wells ``log p(x) = -x^4 + 6 x^2 + 0.5 x``
  (FAB's double well without its Gaussian partner), 2^8 = 256 modes, the sign pattern of x; its
  normaliser and every mode's weight (products of the wells' left and right masses) by quadrature.

Methods, all at equal total steps (``--steps``, default 2000, Monte Carlo batch 64):

- ``flowvi_single``: ``flowvi.fit(target, steps=S, key=...)``, flowvi's defaults (spline coupling,
  warm start, its default optimiser and rate);
- ``flowvi_tempered``: the same with ``tempering=beta0`` (`TEMPERING`; `flowvi.tempering`);
- ``flowvi_mixture``: ``flowvi.fit(target, steps=S // R, num_runs=R, init_spread=s, key=...)`` then
  ``post.mixture(key)``: R runs of S / R steps each (the same total), with the per-target R and s of
  `MIXTURE` (flowvi's defaults for multimodal targets: about as many runs as modes, or more, and
  ``init_spread`` the scale over which the modes lie);
- ``flowjax_maf_rqs``: flowjax's MAF with rational-quadratic splines (`benchmarks.runners.flowjax_runner`),
  S steps of Adam at 1e-3; skipped ("not installed") when flowjax does not import;
- ``numpyro_iaf``: NumPyro's ``AutoIAFNormal`` (`benchmarks.runners.numpyro_runner`), S steps of Adam at 1e-3.

Metrics, from ``--draws`` fresh draws of each fitted approximation (20,000; 4,000 with ``--quick``):

- ``kl``: ``KL(q || p) = log Z - mean(log p~ - log q)``;
- ``covered``: the fraction of modes holding at least 1% of the draws (where every mode's weight is at
  least 1%: ring, gmm40); for manywell8d, whose 256 modes mostly weigh less than 1%, at least a
  quarter of the mode's own weight;
- ``weight_err``: the largest ``|share of draws in mode k - weight of mode k|`` (a draw's mode: the
  nearest centre, the component of largest density, or the sign pattern);
- for ``flowvi_mixture`` also the mixture's weights (``stacked``), the verdict of ``diagnose`` and
  the number of modes it reports.

The ring's acceptance (issue 15): every mode within 0.05 of 1/8 (``weight_err < 0.05``) in every seed.
``--quick``: the ring only, one seed, 400 steps, 4,000 draws. Results go to
``benchmarks/results/multimodal-<timestamp>.{json,md}`` (`benchmarks.report.write_results`).
Runs are in this process, one after another; timings are wall-clock on a shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import time
import traceback
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from benchmarks import report
from benchmarks.targets import ring as ring_target

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGETS = ("ring", "gmm40_2d", "gmm40_10d", "manywell8d")
METHODS = ("flowvi_single", "flowvi_tempered", "flowvi_mixture", "flowjax_maf_rqs", "numpyro_iaf")
MIXTURE = {"ring": {"num_runs": 8, "init_spread": 1.0},
           "gmm40_2d": {"num_runs": 48, "init_spread": 40.0},
           "gmm40_10d": {"num_runs": 48, "init_spread": 40.0},
           "manywell8d": {"num_runs": 32, "init_spread": 2.0}}
"""flowvi's settings for multimodal targets: runs (at least as many as the modes one hopes to find) and
the spread of their starting points (the scale over which the modes lie)."""
TEMPERING = {"ring": 0.1, "gmm40_2d": 0.01, "gmm40_10d": 0.01, "manywell8d": 0.1}
"""``beta0`` of ``flowvi_tempered`` (``fit(tempering=beta0)``: annealed over 3/4 of the steps)."""
NUM_SAMPLES = 64
PEER_LEARNING_RATE = 1e-3
RING_TOL = 0.05


@dataclasses.dataclass
class Multimodal:
    """A target with its modes: ``mode_of(x: (n, dim)) -> (n,)`` ints in ``[0, len(weights))``."""

    name: str
    log_density: Callable
    dim: int
    log_z: float
    weights: np.ndarray
    mode_of: Callable[[np.ndarray], np.ndarray]


def ring() -> Multimodal:
    """The 8-mode ring (`benchmarks.targets.ring`)."""
    t = ring_target()
    angles = 2 * np.pi * np.arange(8) / 8
    centres = 4.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
    return Multimodal("ring", t.log_density, 2, 0.0, np.full(8, 1 / 8),
                      lambda x: np.argmin(((x[:, None, :] - centres) ** 2).sum(-1), axis=1))


def gmm40(dim: int) -> Multimodal:
    """40 unit Gaussians with equal weights, means uniform in ``[-40, 40]^dim`` (seed 0); normalised."""
    means = np.random.default_rng(0).uniform(-40.0, 40.0, size=(40, dim))
    mj = jnp.asarray(means, jnp.float32)
    norm = float(-np.log(40) - 0.5 * dim * np.log(2 * np.pi))

    def log_density(x):
        return logsumexp(-0.5 * jnp.sum((x - mj) ** 2, axis=1)) + norm

    def mode_of(x):
        return np.argmin(((x[:, None, :] - means) ** 2).sum(-1), axis=1)

    return Multimodal(f"gmm40_{dim}d", log_density, dim, 0.0, np.full(40, 1 / 40), mode_of)


def _well_1d(x):
    return -x ** 4 + 6 * x ** 2 + 0.5 * x


def manywell(dim: int = 8) -> Multimodal:
    """Product of `dim` double wells ``-x^4 + 6 x^2 + 0.5 x``; modes = sign patterns, weights by quadrature."""
    grid = np.linspace(-6, 6, 600_001)
    h = grid[1] - grid[0]
    dens = np.exp(_well_1d(grid) - _well_1d(grid).max())
    z1 = dens.sum() * h
    right = dens[grid > 0].sum() * h / z1
    log_z1 = float(np.log(z1) + _well_1d(grid).max())
    bits = (np.arange(2 ** dim)[:, None] >> np.arange(dim)) & 1  # bit j set: coordinate j positive
    weights = np.prod(np.where(bits == 1, right, 1 - right), axis=1)

    def log_density(x):
        return jnp.sum(_well_1d(x))

    def mode_of(x):
        return ((x > 0).astype(np.int64) << np.arange(dim)).sum(axis=1)

    return Multimodal(f"manywell{dim}d", log_density, dim, dim * log_z1, weights, mode_of)


def get_target(name: str) -> Multimodal:
    """One of `TARGETS`."""
    return {"ring": ring, "gmm40_2d": lambda: gmm40(2), "gmm40_10d": lambda: gmm40(10),
            "manywell8d": lambda: manywell(8)}[name]()


# ---------------------------------------------------------------- scores


def score(target: Multimodal, x: np.ndarray, log_q: np.ndarray) -> dict:
    """KL, covered fraction of modes and the largest weight error, from draws ``x: (n, dim)`` with their log q."""
    x, log_q = np.asarray(x, np.float64), np.asarray(log_q, np.float64)
    log_p = np.asarray(jax.vmap(target.log_density)(jnp.asarray(x, jnp.float32)), np.float64)
    ok = np.isfinite(log_p) & np.isfinite(log_q) & np.all(np.isfinite(x), axis=1)
    share = np.bincount(target.mode_of(x[ok]), minlength=len(target.weights)) / max(ok.sum(), 1)
    w = target.weights
    floor = 0.01 if w.min() >= 0.01 else w / 4
    return {"kl": float(target.log_z - np.mean(log_p[ok] - log_q[ok])),
            "covered": float(np.mean(share >= floor)),
            "weight_err": float(np.max(np.abs(share - w))),
            "nonfinite": int((~ok).sum())}


# ---------------------------------------------------------------- methods


def run_flowvi(target: Multimodal, method: str, steps: int, seed: int, draws: int) -> dict:
    """``flowvi_single``, ``flowvi_tempered`` or ``flowvi_mixture`` (see the module docstring)."""
    import flowvi

    key = jax.random.key(seed)
    t0 = time.perf_counter()
    if method in ("flowvi_single", "flowvi_tempered"):
        tempering = TEMPERING[target.name] if method == "flowvi_tempered" else None
        post = flowvi.fit(target.log_density, dim=target.dim, steps=steps, num_samples=NUM_SAMPLES, key=key,
                          progress=False, tempering=tempering)
        rec = {"num_runs": 1, "steps_per_run": steps, "tempering": tempering}
    else:
        opts = MIXTURE[target.name]
        runs = opts["num_runs"]
        post = flowvi.fit(target.log_density, dim=target.dim, steps=max(steps // runs, 1), num_runs=runs,
                          init_spread=opts["init_spread"], num_samples=NUM_SAMPLES, key=key, progress=False)
        post = post.mixture(jax.random.fold_in(key, 1), num_draws=1000)
        rec = {"num_runs": runs, "steps_per_run": max(steps // runs, 1), "init_spread": opts["init_spread"],
               "stacked": [round(float(v), 5) for v in post.mixture_weights],
               "stacking_k_hat": post.settings["mixture"]["k_hat"]}
    fit_s = time.perf_counter() - t0
    x, log_q = post.sample_and_log_prob(jax.random.fold_in(key, 2), draws)
    if method == "flowvi_mixture":
        d = post.diagnose(jax.random.fold_in(key, 3), num_draws=max(draws // post.num_runs, 100), iw_k=None)
        rec.update(verdict=d.verdict, modes_reported=d.num_modes, k_hat=float(d.k_hat))
    return {**rec, "fit_s": fit_s, "x": np.asarray(x), "log_q": np.asarray(log_q)}


def run_numpyro(target: Multimodal, steps: int, seed: int, draws: int) -> dict:
    """NumPyro ``AutoIAFNormal``, as `benchmarks.runners.numpyro_runner` configures it."""
    import numpyro
    import numpyro.distributions as dist
    import optax
    from numpyro.distributions import constraints
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.optim import optax_to_numpyro

    from benchmarks.runners.common import draw_in_chunks
    from benchmarks.runners.numpyro_runner import _log_q_sampler, make_guide

    def model():
        x = numpyro.sample("x", dist.ImproperUniform(constraints.real_vector, (), (target.dim,)))
        numpyro.factor("log_density", target.log_density(x))

    guide, cfg = make_guide("numpyro_iaf", model, target.dim)
    svi = SVI(model, guide, optax_to_numpyro(optax.adam(PEER_LEARNING_RATE)),
              Trace_ELBO(num_particles=NUM_SAMPLES, vectorize_particles=True))
    t0 = time.perf_counter()
    params = svi.run(jax.random.key(seed), steps, progress_bar=False).params
    fit_s = time.perf_counter() - t0
    x, log_q = draw_in_chunks(_log_q_sampler(guide, params), jax.random.key(seed + 1), draws)
    return {"config": cfg, "fit_s": fit_s, "x": x, "log_q": log_q}


def run_flowjax(target: Multimodal, steps: int, seed: int, draws: int) -> dict:
    """flowjax MAF-RQS, as `benchmarks.runners.flowjax_runner` configures it."""
    import equinox as eqx
    import optax
    from flowjax.train import fit_to_key_based_loss
    from flowjax.train.losses import ElboLoss

    from benchmarks.runners.common import draw_in_chunks
    from benchmarks.runners.flowjax_runner import make_flow

    init_key, fit_key = jax.random.split(jax.random.key(seed))
    flow0, cfg = make_flow("flowjax_maf_rqs", target.dim, init_key)
    t0 = time.perf_counter()
    flow, _ = fit_to_key_based_loss(fit_key, flow0, loss_fn=ElboLoss(target.log_density, num_samples=NUM_SAMPLES),
                                    steps=steps, optimizer=optax.adam(PEER_LEARNING_RATE), show_progress=False)
    fit_s = time.perf_counter() - t0
    sample = eqx.filter_jit(lambda k, m: flow.sample_and_log_prob(k, (m,)))
    x, log_q = draw_in_chunks(sample, jax.random.key(seed + 1), draws)
    return {"config": cfg, "fit_s": fit_s, "x": x, "log_q": log_q}


PEER_MODULES = {"flowjax_maf_rqs": "flowjax", "numpyro_iaf": "numpyro"}


def run_one(target: Multimodal, method: str, steps: int, seed: int, draws: int) -> dict:
    """One (target, method, seed): a record with status, metrics and settings."""
    rec = {"target": target.name, "method": method, "seed": seed, "steps": steps}
    module = PEER_MODULES.get(method)
    if module is not None:
        import importlib.util
        if importlib.util.find_spec(module) is None:
            return {**rec, "status": "not installed", "error": f"{module} does not import here"}
    try:
        if method.startswith("flowvi"):
            out = run_flowvi(target, method, steps, seed, draws)
        elif method == "numpyro_iaf":
            out = run_numpyro(target, steps, seed, draws)
        else:
            out = run_flowjax(target, steps, seed, draws)
    except Exception as err:  # noqa: BLE001 - a failed run is a result
        return {**rec, "status": "failed", "error": f"{type(err).__name__}: {err}"[:2000],
                "traceback": traceback.format_exc()[-3000:]}
    x, log_q = out.pop("x"), out.pop("log_q")
    return {**rec, **out, "status": "ok", "metrics": score(target, x, log_q)}


# ---------------------------------------------------------------- tables


def render(results: dict) -> str:
    """Markdown: per target and method, the mean (and worst) over seeds of every metric."""
    m = results["meta"]
    lines = [f"# flowvi on multimodal targets ({'quick' if m['quick'] else 'full'}: {m['steps']} total steps, "
             f"batch {NUM_SAMPLES}, {m['draws']} draws, seeds {m['seeds']}; {results['cpu_count']} CPUs, "
             f"{results['started']})", "",
             "Means over seeds (worst seed in brackets). covered: fraction of modes with >= 1% of the draws "
             "(manywell8d: >= a quarter of the mode's weight); weight err: the largest |share of draws - "
             f"mode weight|. Ring acceptance: weight err < {RING_TOL} in every seed."]
    for t in dict.fromkeys(r["target"] for r in results["runs"]):
        lines += ["", f"## {t}", "", "| method | runs x steps | KL | covered | weight err | fit s | notes |",
                  "|---|---|---|---|---|---|---|"]
        for method in dict.fromkeys(r["method"] for r in results["runs"] if r["target"] == t):
            recs = [r for r in results["runs"] if r["target"] == t and r["method"] == method]
            ok = [r for r in recs if r["status"] == "ok"]
            if not ok:
                lines.append(f"| {method} | | | | | | {recs[0]['status']}: {str(recs[0].get('error'))[:70]} |")
                continue
            kl = np.array([r["metrics"]["kl"] for r in ok])
            cov = np.array([r["metrics"]["covered"] for r in ok])
            err = np.array([r["metrics"]["weight_err"] for r in ok])
            fit = np.mean([r["fit_s"] for r in ok])
            shape = f"{ok[0].get('num_runs', 1)} x {ok[0].get('steps_per_run', ok[0]['steps'])}"
            notes = []
            if len(ok) < len(recs):
                notes.append(f"{len(recs) - len(ok)} seed(s) failed")
            if "modes_reported" in ok[0]:
                notes.append("diagnose: " + ", ".join(f"{r['modes_reported']} modes, {r['verdict'].split(':')[0]}"
                                                      for r in ok[:3]))
            if t == "ring":
                notes.append(f"acceptance {'met' if np.all(err < RING_TOL) else 'not met'}")
            lines.append(f"| {method} | {shape} | {kl.mean():.3f} ({kl.max():.3f}) | {cov.mean():.3f} "
                         f"({cov.min():.3f}) | {err.mean():.3f} ({err.max():.3f}) | {fit:.1f} | {'; '.join(notes)} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.multimodal", description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default=None, help=f"comma-separated from {', '.join(TARGETS)} (default all)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated from {', '.join(METHODS)}")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 5; 1 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="total steps per method (default 2000; 400 --quick)")
    p.add_argument("--draws", type=int, default=None, help="draws scored (default 20000; 4000 --quick)")
    p.add_argument("--quick", action="store_true", help="the ring, one seed, 400 steps, 4000 draws")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results folder")
    args = p.parse_args(argv)
    args.targets = report.choices(p, "target", args.targets or ("ring" if args.quick else ",".join(TARGETS)), TARGETS)
    args.methods = report.choices(p, "method", args.methods, METHODS)
    args.seeds = args.seeds or (1 if args.quick else 5)
    args.steps = args.steps or (400 if args.quick else 2000)
    args.draws = args.draws or (4000 if args.quick else 20_000)
    return args


def main(argv=None) -> dict:
    """Run the benchmark; print and write the table."""
    args = parse_args(argv)
    results = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpu_count": os.cpu_count(),
               "meta": {"quick": args.quick, "steps": args.steps, "draws": args.draws, "seeds": args.seeds,
                        "mixture": MIXTURE, "num_samples": NUM_SAMPLES, "peer_learning_rate": PEER_LEARNING_RATE},
               "runs": []}
    for name in args.targets:
        target = get_target(name)
        for method in args.methods:
            for seed in range(args.seeds):
                rec = run_one(target, method, args.steps, seed, args.draws)
                results["runs"].append(rec)
                if rec["status"] == "ok":
                    mt = rec["metrics"]
                    print(f"[{name}] {method} seed {seed}: KL {mt['kl']:.3f}, covered {mt['covered']:.3f}, "
                          f"weight err {mt['weight_err']:.3f}, {rec['fit_s']:.1f} s", flush=True)
                else:
                    print(f"[{name}] {method} seed {seed}: {rec['status']}: {rec.get('error')}", flush=True)
                    if rec["status"] == "not installed":
                        break
    table = render(results)
    print("\n" + table)
    report.write_results(results, table, args.out, "multimodal")
    return results


if __name__ == "__main__":
    main()
