"""NeuTra against plain NUTS: ``python -m benchmarks.neutra [--quick] [--targets ...]``.

On three targets with bad or awkward geometry, in one run:

- ``eight_schools_centered`` (models/eight_schools_centered.py): the centred
  hierarchical funnel; reference moments of mu, tau and theta from a long
  NUTS run on the non-centred model (models/eight_schools.py), the same posterior;
- ``funnel10d`` (models/funnel.py): Neal's funnel, v ~ N(0, 3^2), x_i | v ~
  N(0, e^v); exact moments (sd of x_i = e^(9/4) = 9.49);
- ``hierarchical_regression`` (models/hierarchical_regression.py): radon,
  176 unconstrained coordinates; reference from a long NUTS run on the model.

Methods, each with the same warm-up, draws and chains (vectorised):

- ``nuts_diag``, ``nuts_dense``: NumPyro's NUTS on the target (its
  unconstrained space), diagonal or dense mass matrix, started as NumPyro
  starts (uniform on (-2, 2));
- ``neutra``: `flowvi.fit` (an IAF by default) then `flowvi.neutra`.

Reported per method: divergences after warm-up, min bulk ESS over the flat
coordinates, min bulk ESS per second of total wall time (NeuTra: fit, its
compilation, diagnostics and NUTS; NUTS: compilation and sampling), max R-hat,
and moment errors against the reference: the largest ``|mean - ref| / ref sd``
and ``|sd / ref sd - 1|`` over the named quantities, and the same errors in
units of their Monte Carlo standard errors (ArviZ's ``mcse`` for the mean and
the sd, which accounts for heavy tails; ~N(0, 1) when all is well, so a max
over k quantities is typically below ~3).

References are cached in benchmarks/.cache/ (keyed on the model files).
Results: benchmarks/results/neutra-<timestamp>.json and .md (also printed).
Timings only mean something on a quiet machine: run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import pathlib
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import report

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
CACHE_DIR = pathlib.Path(__file__).resolve().parent / ".cache"
ALL_TARGETS = ("eight_schools_centered", "funnel10d", "hierarchical_regression")
METHODS = ("nuts_diag", "nuts_dense", "neutra")
FULL = {"warmup": 1000, "samples": 1000, "chains": 4, "reference_chains": 4, "reference_warmup": 2000,
        "reference_samples": 10000}
QUICK = {"warmup": 100, "samples": 100, "chains": 2, "reference_chains": 2, "reference_warmup": 300,
         "reference_samples": 1000, "steps": 200, "flow_options": {"layers": 2, "hidden": (8,)}}
# Flow and fit settings of the NeuTra runs (full mode); --flow, --steps and --quick override them.
FITS = {
    "eight_schools_centered": {"flow": "iaf", "steps": 3000, "flow_options": {"layers": 4, "hidden": (32, 32)}},
    "funnel10d": {"flow": "iaf", "steps": 5000, "flow_options": {"layers": 4, "hidden": (32, 32)}},
    "hierarchical_regression": {"flow": "iaf", "steps": 3000,
                                "flow_options": {"layers": 4, "hidden": (256, 256)}},
}


def _load(name: str):
    path = MODELS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_neutra_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _digest(*names: str) -> str:
    text = b"".join((MODELS / f"{n}.py").read_bytes() for n in names)
    for f in sorted((MODELS / "data").glob("*")):
        text += f.read_bytes()
    return hashlib.sha256(text).hexdigest()[:12]


@dataclasses.dataclass
class Case:
    """A benchmark target: a flowvi Target, how to read named quantities off flat draws, and their reference."""

    name: str
    target: object
    quantities: Callable[[np.ndarray], tuple[list[str], np.ndarray]]
    reference: dict
    reference_kind: str


def _site_quantities(target, sites: list[str]) -> Callable:
    """Flat draws (n, dim) -> names and (n, k) values of the named sites (constrained, raveled)."""
    def read(x: np.ndarray):
        values = target.constrain(jnp.asarray(x, jnp.float32))
        names, cols = [], []
        for site in sites:
            v = np.asarray(values[site], np.float64).reshape(len(x), -1)
            shape = np.shape(values[site])[1:]
            names += [site] if shape == () else [f"{site}[{i}]" for i in range(v.shape[1])]
            cols.append(v)
        return names, np.concatenate(cols, axis=1)
    return read


def _numpyro_reference(name: str, target, sites: list[str], settings: dict, tag: str) -> dict:
    """Mean and sd of the named sites from a long NUTS run on `target` (cached)."""
    cache = CACHE_DIR / f"neutra_ref_{name}_{tag}.npz"
    if not cache.exists():
        print(f"[reference] NUTS on {name}: {settings['reference_chains']} chains x "
              f"{settings['reference_samples']} draws (cached to {cache.relative_to(ROOT)})", flush=True)
        run = run_nuts(target, jax.random.key(20240501), settings["reference_warmup"],
                       settings["reference_samples"], settings["reference_chains"], dense=False,
                       target_accept_prob=0.95)
        names, q = _site_quantities(target, sites)(run["x"].reshape(-1, target.dim))
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, names=np.array(names), mean=q.mean(0), sd=q.std(0), divergences=run["divergences"],
                 min_ess=run["min_ess"], max_rhat=run["max_rhat"])
    data = np.load(cache)
    return {"names": [str(n) for n in data["names"]], "mean": data["mean"], "sd": data["sd"],
            "reference_run": {"divergences": int(data["divergences"]), "min_ess": float(data["min_ess"]),
                              "max_rhat": float(data["max_rhat"])}}


def build_case(name: str, settings: dict, quick: bool) -> Case:
    """The target `name` with its reference (running and caching a reference NUTS run when needed)."""
    import flowvi

    tag = ("quick-" if quick else "") + _digest(name if name != "funnel10d" else "funnel")
    if name == "funnel10d":
        m = _load("funnel")
        target = flowvi.Target(m.log_density, m.dim, m.names)
        ref = {"names": list(m.names), "mean": m.reference["mean"], "sd": m.reference["sd"]}
        return Case(name, target, lambda x: (list(m.names), np.asarray(x, np.float64)), ref, "exact")
    if name == "eight_schools_centered":
        m = _load(name)
        target = flowvi.Target.from_numpyro(m.model, *m.args, **m.kwargs)
        sites = ["mu", "tau", "theta"]
        nc = _load("eight_schools")
        nc_target = flowvi.Target.from_numpyro(nc.model, *nc.args, **nc.kwargs)
        tag = ("quick-" if quick else "") + _digest(name, "eight_schools")
        ref = _numpyro_reference("eight_schools_noncentered", nc_target, sites, settings, tag)
        return Case(name, target, _site_quantities(target, sites), ref, "NUTS on the non-centred model")
    if name == "hierarchical_regression":
        m = _load(name)
        target = flowvi.Target.from_numpyro(m.model, *m.args, **m.kwargs)
        sites = sorted(target.site_shapes)
        ref = _numpyro_reference(name, target, sites, settings, tag)
        return Case(name, target, _site_quantities(target, sites), ref, "long NUTS on the model")
    raise KeyError(f"unknown target {name!r}; expected one of {ALL_TARGETS}")


def run_nuts(target, key, warmup: int, samples: int, chains: int, dense: bool,
             target_accept_prob: float = 0.8) -> dict:
    """NumPyro NUTS on the target's flat unconstrained density; draws and statistics, wall time included."""
    from numpyro.infer import MCMC, NUTS

    from flowvi.diagnostics import across_runs

    init_key, run_key = jax.random.split(key)
    kernel = NUTS(potential_fn=lambda x: -target.log_density(x), dense_mass=dense,
                  target_accept_prob=target_accept_prob)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=samples, num_chains=chains, chain_method="vectorized",
                progress_bar=False)
    init = jax.random.uniform(init_key, (chains, target.dim), minval=-2.0, maxval=2.0)
    start = time.perf_counter()
    mcmc.run(jax.random.key_data(run_key), init_params=init, extra_fields=("num_steps", "adapt_state.step_size"))
    x = np.asarray(jax.block_until_ready(mcmc.get_samples(group_by_chain=True)), np.float64)
    seconds = time.perf_counter() - start
    extra = mcmc.get_extra_fields(group_by_chain=True)
    rhat, ess = across_runs(x)
    return {"x": x, "seconds": seconds, "divergences": int(np.sum(extra["diverging"])),
            "min_ess": float(np.nanmin(ess)), "max_rhat": float(np.nanmax(rhat)),
            "mean_steps": float(np.mean(extra["num_steps"])),
            "step_size": float(np.mean(np.asarray(extra["adapt_state.step_size"])[:, -1]))}


def run_neutra(case: Case, key, warmup: int, samples: int, chains: int, fit_settings: dict) -> dict:
    """flowvi.fit then flowvi.neutra; the wall time covers both (compilation and diagnostics included)."""
    import flowvi

    fit_key, mcmc_key = jax.random.split(key)
    start = time.perf_counter()
    post = flowvi.fit(case.target, key=fit_key, flow=fit_settings["flow"], steps=fit_settings["steps"],
                      progress=False, **fit_settings["flow_options"])
    result = flowvi.neutra(post, mcmc_key, num_warmup=warmup, num_samples=samples, num_chains=chains,
                           progress=False, target_accept_prob=fit_settings.get("target_accept_prob", 0.8))
    seconds = time.perf_counter() - start
    return {"x": result.x, "seconds": seconds, "divergences": int(result.divergences.sum()),
            "min_ess": float(np.nanmin(result.ess)), "max_rhat": float(np.nanmax(result.rhat)),
            "mean_steps": float(result.stats["n_steps"].mean()), "step_size": float(result.step_size.mean()),
            "fit_seconds": float(post.fit_seconds), "mcmc_seconds": float(result.mcmc_seconds),
            "k_hat": float(result.vi.k_hat), "elbo": float(result.vi.elbo),
            "flow": f"{fit_settings['flow']} {fit_settings['flow_options']}, {fit_settings['steps']} steps",
            "target_accept_prob": fit_settings.get("target_accept_prob", 0.8)}


def moment_errors(case: Case, x: np.ndarray) -> dict:
    """Largest errors of the named quantities' means and sds against the reference, raw and in MCSE units."""
    import arviz

    chains, draws, dim = x.shape
    names, q = case.quantities(x.reshape(-1, dim))
    if names != case.reference["names"]:
        raise ValueError(f"{case.name}: quantities {names[:4]}... differ from the reference's")
    q = q.reshape(chains, draws, -1)
    ref_mean, ref_sd = np.asarray(case.reference["mean"]), np.asarray(case.reference["sd"])
    mean, sd = q.mean(axis=(0, 1)), q.std(axis=(0, 1))
    mcse_mean = np.array([float(arviz.mcse(q[:, :, k], method="mean")) for k in range(q.shape[-1])])
    mcse_sd = np.array([float(arviz.mcse(q[:, :, k], method="sd")) for k in range(q.shape[-1])])
    mean_err, sd_err = np.abs(mean - ref_mean) / ref_sd, np.abs(sd / ref_sd - 1)
    z_mean, z_sd = np.abs(mean - ref_mean) / mcse_mean, np.abs(sd - ref_sd) / mcse_sd
    worst_mean, worst_sd = int(np.argmax(mean_err)), int(np.argmax(sd_err))
    return {"mean_err_sd": float(mean_err.max()), "mean_err_at": names[worst_mean],
            "sd_rel_err": float(sd_err.max()), "sd_err_at": names[worst_sd],
            "mean_err_mcse": float(np.nanmax(z_mean)), "sd_err_mcse": float(np.nanmax(z_sd))}


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.neutra", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {QUICK['warmup']} warm-up, {QUICK['samples']} draws, {QUICK['chains']} "
                        f"chains, {QUICK['steps']}-step fits of tiny flows, small references")
    p.add_argument("--targets", default=",".join(ALL_TARGETS), help=f"comma-separated from {ALL_TARGETS}")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated from {METHODS}")
    p.add_argument("--warmup", type=int, default=None, help=f"NUTS warm-up per chain (default {FULL['warmup']})")
    p.add_argument("--samples", type=int, default=None, help=f"draws per chain (default {FULL['samples']})")
    p.add_argument("--chains", type=int, default=None, help=f"chains (default {FULL['chains']})")
    p.add_argument("--steps", type=int, default=None,
                   help="NeuTra fit steps (default per target; 0: the stopping rule)")
    p.add_argument("--flow", default=None, help="NeuTra flow family (default iaf)")
    p.add_argument("--target-accept", type=float, default=0.8, help="NeuTra's NUTS target acceptance (default 0.8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results folder")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    """Run the benchmark; print and write the tables; return the results."""
    args = parse_args(argv)
    settings = {**FULL, **(QUICK if args.quick else {})}
    for name in ("warmup", "samples", "chains"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    targets = [t for t in args.targets.split(",") if t]
    methods = [m for m in args.methods.split(",") if m]
    for t in targets:
        if t not in ALL_TARGETS:
            raise SystemExit(f"unknown target {t!r}; expected one of {ALL_TARGETS}")
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; expected one of {METHODS}")
    import numpyro  # noqa: F401 - imported before any timing

    import flowvi

    results = {"settings": {k: v for k, v in settings.items() if k != "flow_options"}, "quick": args.quick,
               "versions": {"jax": jax.__version__, "flowvi": flowvi.__version__, "numpyro": numpyro.__version__},
               "device": str(jax.devices()[0]), "runs": []}
    key = jax.random.key(args.seed)
    for t_index, name in enumerate(targets):
        case = build_case(name, settings, args.quick)
        fit_settings = dict(FITS[name])
        if args.quick:
            fit_settings.update(steps=QUICK["steps"], flow_options=QUICK["flow_options"])
        if args.flow is not None:
            fit_settings.update(flow=args.flow, flow_options={} if args.flow != fit_settings["flow"]
                                else fit_settings["flow_options"])
        if args.steps is not None:
            fit_settings["steps"] = args.steps or None  # 0: flowvi's stopping rule
        fit_settings["target_accept_prob"] = args.target_accept
        for m_index, method in enumerate(methods):
            run_key = jax.random.fold_in(jax.random.fold_in(key, t_index), m_index)
            print(f"[{name}] {method} ...", flush=True)
            if method == "neutra":
                rec = run_neutra(case, run_key, settings["warmup"], settings["samples"], settings["chains"],
                                 fit_settings)
            else:
                rec = run_nuts(case.target, run_key, settings["warmup"], settings["samples"], settings["chains"],
                               dense=method == "nuts_dense")
            rec.update(moment_errors(case, rec.pop("x")))
            rec.update(target=name, method=method, ess_per_s=rec["min_ess"] / rec["seconds"],
                       reference=case.reference_kind)
            print(f"[{name}] {method}: {rec['divergences']} divergences, min ESS {rec['min_ess']:.0f}, "
                  f"{rec['ess_per_s']:.2f} ESS/s, max R-hat {rec['max_rhat']:.3f}, {rec['seconds']:.1f} s",
                  flush=True)
            results["runs"].append(rec)
    table = render(results)
    print("\n" + table)
    report.write_results(results, table, args.out, "neutra")
    return results


def render(results: dict) -> str:
    """Markdown tables, one per target, and the issue's acceptance checks."""
    s = results["settings"]
    lines = [f"# NeuTra against plain NUTS ({'quick' if results['quick'] else 'full'})", "",
             f"{s['chains']} chains x {s['samples']} draws after {s['warmup']} warm-up, vectorised; "
             f"{results['device']}; jax {results['versions']['jax']}, numpyro {results['versions']['numpyro']}. "
             "ESS/s: min bulk ESS per second of total wall time (NeuTra: fit + NUTS, compilation included).", ""]
    head = ["method", "divergences", "min ESS", "ESS/s", "max R-hat", "mean err (sd)", "sd err", "mean err (MCSE)",
            "sd err (MCSE)", "wall s", "k-hat"]
    for target in dict.fromkeys(r["target"] for r in results["runs"]):
        runs = [r for r in results["runs"] if r["target"] == target]
        lines += [f"## {target}", "", f"reference: {runs[0]['reference']}", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in runs:
            wall = f"{r['seconds']:.1f}" + (f" ({r['fit_seconds']:.1f} fit)" if "fit_seconds" in r else "")
            lines.append("| " + " | ".join([
                r["method"], str(r["divergences"]), f"{r['min_ess']:.0f}", f"{r['ess_per_s']:.2f}",
                f"{r['max_rhat']:.3f}", f"{r['mean_err_sd']:.3f} ({r['mean_err_at']})",
                f"{r['sd_rel_err']:.3f} ({r['sd_err_at']})", f"{r['mean_err_mcse']:.1f}", f"{r['sd_err_mcse']:.1f}",
                wall, f"{r['k_hat']:.2f}" if "k_hat" in r else ""]) + " |")
        neutra = next((r for r in runs if r["method"] == "neutra"), None)
        if neutra is not None:
            lines += ["", f"NeuTra flow: {neutra['flow']}; ELBO {neutra['elbo']:.3f}"]
        lines.append("")
    lines += _acceptance(results["runs"])
    return "\n".join(lines) + "\n"


def _acceptance(runs: list[dict]) -> list[str]:
    """The issue's acceptance checks, where their runs are present."""
    by = {(r["target"], r["method"]): r for r in runs}
    lines = ["## Acceptance", ""]
    funnel = by.get(("funnel10d", "neutra"))
    if funnel is not None:
        plain = [by[("funnel10d", m)] for m in ("nuts_diag", "nuts_dense") if ("funnel10d", m) in by]
        fewer = all(funnel["divergences"] == 0 or funnel["divergences"] < p["divergences"] for p in plain)
        exact = funnel["mean_err_mcse"] < 4 and funnel["sd_err_mcse"] < 4
        lines.append(f"- funnel10d: NeuTra divergences {funnel['divergences']} vs plain "
                     f"{[p['divergences'] for p in plain]}: {'pass' if fewer else 'FAIL'}; moments within 4 MCSE "
                     f"of the exact ones (max {funnel['mean_err_mcse']:.1f}, {funnel['sd_err_mcse']:.1f}): "
                     f"{'pass' if exact else 'FAIL'}")
    schools = by.get(("eight_schools_centered", "neutra"))
    plain = by.get(("eight_schools_centered", "nuts_diag"))
    if schools is not None and plain is not None:
        fewer = schools["divergences"] < plain["divergences"] or schools["divergences"] == 0
        faster = schools["ess_per_s"] >= plain["ess_per_s"]
        lines.append(f"- eight_schools_centered: divergences {schools['divergences']} vs {plain['divergences']}: "
                     f"{'pass' if fewer else 'FAIL'}; min ESS/s {schools['ess_per_s']:.2f} vs "
                     f"{plain['ess_per_s']:.2f}: {'pass' if faster else 'FAIL'}")
    return lines


if __name__ == "__main__":
    main(sys.argv[1:])
