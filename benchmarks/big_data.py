"""Large data: subsampled flowvi fits, with and without control variates, against NUTS.

``python -m benchmarks.big_data [--cases 100000x10,1000000x50] [--methods ...] [--quick]``

A Bayesian logistic regression, ``w ~ N(0, I_d)``, ``y_i ~ Bernoulli(sigmoid(x_i . w))``
with ``x_i ~ N(0, I_d)`` (float32, generated from a fixed seed, `make_data`),
for N in {10^5, 10^6} and d in {10, 50}, plus the issue's acceptance case
N = 10^6, d = 20 and its smaller stand-in N = 2 x 10^5, d = 20 (`CASES`).
Each method runs in a fresh ``python`` process (cold: imports, data
generation excluded, compilation included):

- ``flowvi_default``: ``flowvi.fit(target, key=jax.random.key(0))``, every
  option at its default (``subsample="auto"``: `flowvi.subsampling` decides),
  then `NUM_DRAWS` draws;
- ``flowvi_cv``: ``flowvi.fit(target, subsample=B, key=jax.random.key(0))``
  with every other option at its default, so the control variates are on
  (`flowvi.control_variates`), then `NUM_DRAWS` draws;
- ``flowvi_plain``: the same with ``control_variates=False``;
- ``flowvi_full``: the same with ``subsample=None`` (the full data every step);
- ``nuts``: NumPyro NUTS, one chain, 500 warm-up + 500 draws.

``target`` is the keyword form ``flowvi.Target(log_prior=, log_likelihood=,
data=(X, y), dim=d)``; NUTS runs the same posterior as a NumPyro model.

Scores are against a long NUTS reference (`REFERENCE`: 4 chains x 2500 draws
after 1000 warm-up, float64; from N = 2 x 10^5 rows `LARGE_REFERENCE`, 4 x 1000
after 500, enough when R-hat < 1.01) or, from N = 10^6 rows, where NUTS takes
hours, importance sampling from the Laplace approximation's Student-t
(`IMPORTANCE_REFERENCE`, `benchmarks.importance_reference`: PSIS, its k-hat and
ESS recorded; at N = 2 x 10^5 it agrees with the NUTS reference within 0.029
NUTS sds in every mean and 0.972-1.021 in every sd, ESS 23,500 of 32,000 draws,
k-hat -0.24), made on first use in its own process and cached
in ``benchmarks/references/big_data-n<N>-d<d>.json`` (remade when the data
generation changes, `digest`, or with ``--refresh-references``): the worst
|mean - reference mean| / reference sd and the range of sd / reference sd
over the d coefficients (the issue's bar: < 0.1 and within 0.9-1.1; the
scoring is `benchmarks.vs_nuts.score`).

Gradient-noise reduction (``flowvi_cv`` rows): at 16 draws of the fitted
posterior, the variance over 256 minibatch keys of the target's gradient with
the control variates against the plain minibatch estimate's (the same rows),
summed over coordinates and averaged over the draws (``grad var ratio``), and
the worst coordinate's ratio. It is measured after the timed part, with the
reference point the fit used (the warm start is rerun, same key).

``--quick``: N = 10^4, d = 5, every method once, a small reference kept out of
git (``benchmarks/.cache/big_data_quick``); to check that the benchmark runs.
The table is printed and written with the JSON to
``benchmarks/results/big_data-<timestamp>.{json,md}``. Timings are
wall-clock: on a shared machine they carry its load (recorded).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import pathlib
import sys
import tempfile
import time

from benchmarks import report
from benchmarks.run import _spawn as run_spawn

ROOT = pathlib.Path(__file__).resolve().parent.parent
REFERENCES = pathlib.Path(__file__).resolve().parent / "references"
QUICK_REFERENCES = pathlib.Path(__file__).resolve().parent / ".cache" / "big_data_quick"
CASES = ((100_000, 10), (100_000, 50), (200_000, 20), (1_000_000, 10), (1_000_000, 20), (1_000_000, 50))
ACCEPTANCE = (1_000_000, 20)
"""The issue's acceptance row (``--acceptance``: this case, flowvi defaults against NUTS)."""
QUICK_CASES = ((10_000, 5),)
METHODS = ("flowvi_default", "flowvi_cv", "flowvi_plain", "flowvi_full", "nuts")
SUBSAMPLE = 2048
NUM_DRAWS = 4000
NUTS = {"chains": 1, "warmup": 500, "draws": 500}
REFERENCE = {"chains": 4, "warmup": 1000, "draws": 2500, "target_accept_prob": 0.9, "seed": 20240622}
LARGE_REFERENCE = {"chains": 4, "warmup": 500, "draws": 1000, "target_accept_prob": 0.9, "seed": 20240622}
"""From N = 2 x 10^5 rows: 4 chains x 1000 draws (enough when R-hat < 1.01; each draw costs a pass over N rows)."""
IMPORTANCE_REFERENCE = {"method": "importance", "draws": 32_000, "seed": 20240622}
"""From N = 10^6 rows: PSIS from the Laplace approximation's Student-t (`benchmarks.importance_reference`);
NUTS there takes hours on a CPU."""
IMPORTANCE_FROM = 1_000_000
QUICK_REFERENCE = {"chains": 2, "warmup": 500, "draws": 1000, "target_accept_prob": 0.9, "seed": 20240622}
NOISE_DRAWS, NOISE_KEYS = 16, 256
DATA_SEED = 20
DATA_VERSION = 1  # bump when make_data changes: the cached references are remade


# ---------------------------------------------------------------- the model and its data


def case_name(n: int, d: int) -> str:
    """``"n100000-d10"``."""
    return f"n{n}-d{d}"


def make_data(n: int, d: int):
    """``X: (n, d)``, ``y: (n,)`` float32: ``x_i ~ N(0, I)``, true coefficients ``N(0, 1) / sqrt(d) * 2``."""
    import numpy as np

    rng = np.random.default_rng([DATA_SEED, n, d])
    w = rng.normal(size=d) * 2.0 / np.sqrt(d)
    X = rng.standard_normal((n, d), dtype=np.float32)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(X @ w)))).astype(np.float32)
    return X, y


def reference_settings(n: int, quick: bool) -> dict:
    """The NUTS reference's size for N = `n` rows."""
    if quick:
        return QUICK_REFERENCE
    return IMPORTANCE_REFERENCE if n >= IMPORTANCE_FROM else LARGE_REFERENCE if n >= 200_000 else REFERENCE


def digest(n: int, d: int) -> str:
    """Hash of what determines the posterior: the case, the data generation and the model's source."""
    text = f"{DATA_VERSION}:{DATA_SEED}:{n}:{d}:" + inspect.getsource(make_data) + inspect.getsource(numpyro_model)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flowvi_target(X, y):
    """The keyword `flowvi.Target`: prior ``N(0, I)``, Bernoulli-logit likelihood of one row."""
    import jax.numpy as jnp

    import flowvi

    def log_likelihood(w, row):
        x, t = row
        logit = x @ w
        # log(1 + e^l) as NumPyro's Bernoulli(logits=) writes it: 2x faster per step than jnp.logaddexp on a CPU.
        return t * logit - jnp.maximum(logit, 0.0) - jnp.log1p(jnp.exp(-jnp.abs(logit)))

    return flowvi.Target(log_prior=lambda w: -0.5 * jnp.sum(w ** 2), log_likelihood=log_likelihood,
                         data=(X, y), dim=X.shape[1], names=[f"w[{i}]" for i in range(X.shape[1])])


def numpyro_model(X, y):
    """The same posterior as a NumPyro model (for NUTS)."""
    import numpyro
    import numpyro.distributions as dist

    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    numpyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)


# ---------------------------------------------------------------- workers (one fresh process each)


def run_flowvi(method: str, n: int, d: int) -> dict:
    """One flowvi fit with its defaults (subsampled with or without control variates, or full data); timings."""
    import jax
    import numpy as np

    import flowvi
    from benchmarks.vs_nuts import moments

    X, y = make_data(n, d)
    t0 = time.perf_counter()
    target = flowvi_target(X, y)
    options = {"flowvi_default": {}, "flowvi_cv": {"subsample": SUBSAMPLE},
               "flowvi_plain": {"subsample": SUBSAMPLE, "control_variates": False},
               "flowvi_full": {"subsample": None}}[method]
    post = flowvi.fit(target, key=jax.random.key(0), progress=False, **options)
    draws = np.asarray(jax.block_until_ready(post.sample(jax.random.key(1), NUM_DRAWS)))
    result = time.perf_counter() - t0
    rec = {"result_s": result, "fit_s": float(post.fit_seconds), "steps_run": np.asarray(post.steps_run).tolist(),
           "stop_reason": post.stop_reason, "control_variates": post.settings.get("control_variates"),
           "subsample": post.settings.get("subsample"), "moments": moments({"w": draws})}
    if method == "flowvi_cv":
        rec.update(gradient_noise(target, post, jax.random.key(0)))
    return rec


def gradient_noise(target, post, fit_key) -> dict:
    """Minibatch variance of the target's gradient at draws of `post`: control variates over the plain estimate."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from flowvi.control_variates import choose_order, with_control_variates
    from flowvi.reverse_kl import WARM_START_STREAM
    from flowvi.warm_start import gaussian_start

    found, why = gaussian_start(target.log_density, target.dim, jax.random.fold_in(fit_key, WARM_START_STREAM))
    if found is None:
        return {"grad_var_ratio": None, "grad_var_note": f"no warm start: {why}"}
    order, _ = choose_order("auto", True, found.loc, "", target.dim)
    sub, full = target.data_spec(SUBSAMPLE), target.data_spec()
    data = jax.device_put(sub.data)
    controlled, controlled_data = with_control_variates(sub.log_density, full.log_density, data,
                                                        jnp.asarray(found.loc), order)
    xs = post.sample(jax.random.key(2), NOISE_DRAWS)
    keys = jax.random.split(jax.random.key(3), NOISE_KEYS)

    def variances(log_density, data):
        """``(draws, dim)``: the gradient's variance over the keys, draw by draw (bounded memory)."""
        over_keys = jax.vmap(jax.grad(log_density), (None, None, 0))
        one = lambda x: jnp.var(over_keys(x, data, keys), axis=0)  # noqa: E731
        return np.asarray(jax.jit(lambda xs: jax.lax.map(one, xs))(xs), np.float64)

    plain, cv = variances(sub.log_density, data), variances(controlled, controlled_data)
    return {"grad_var_ratio": float(np.mean(cv.sum(1) / plain.sum(1))),
            "grad_var_ratio_worst": float(np.max(cv / plain)), "plain_grad_sd": float(np.sqrt(plain.mean()))}


def run_nuts(n: int, d: int, settings: dict) -> dict:
    """NumPyro NUTS on the model (one chain 500 + 500, or the reference's size); timings and quality."""
    import jax
    import numpy as np
    from numpyro.diagnostics import summary
    from numpyro.infer import MCMC, NUTS

    from benchmarks.vs_nuts import moments

    X, y = make_data(n, d)
    t0 = time.perf_counter()
    kernel = NUTS(numpyro_model, target_accept_prob=settings.get("target_accept_prob", 0.8))
    mcmc = MCMC(kernel, num_warmup=settings["warmup"], num_samples=settings["draws"], num_chains=settings["chains"],
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(settings.get("seed", 0)), X, y, extra_fields=("diverging", "num_steps"))
    samples = np.asarray(jax.block_until_ready(mcmc.get_samples(group_by_chain=True)["w"]))
    result = time.perf_counter() - t0
    stats = summary({"w": samples}, group_by_chain=True)["w"]
    extra = mcmc.get_extra_fields()
    return {"result_s": result, **settings, "divergences": int(np.sum(extra["diverging"])),
            "mean_leapfrog_steps": float(np.mean(extra["num_steps"])),
            "max_rhat": float(np.nanmax(stats["r_hat"])), "min_ess": float(np.nanmin(stats["n_eff"])),
            "ess": {f"w[{i}]": float(e) for i, e in enumerate(np.ravel(stats["n_eff"]))},
            "moments": moments({"w": samples.reshape(-1, d)})}


def run_importance_reference(n: int, d: int, settings: dict) -> dict:
    """The importance-sampling reference of case (n, d) (`benchmarks.importance_reference`), timed."""
    from benchmarks.importance_reference import run_importance

    X, y = make_data(n, d)
    t0 = time.perf_counter()
    rec = run_importance(X, y, settings["draws"], settings["seed"])
    return {**rec, "result_s": time.perf_counter() - t0, **settings}


def worker(method: str, case: str, quick: bool, out: str) -> None:
    """``--worker``: one method on one case in this (fresh) process; the record goes to `out` as JSON."""
    import traceback

    n, d = (int(part[1:]) for part in case.split("-"))
    try:
        if method == "reference":
            settings = reference_settings(n, quick)
            rec = run_importance_reference(n, d, settings) if settings.get("method") == "importance" else \
                run_nuts(n, d, settings)
        elif method == "importance":
            rec = run_importance_reference(n, d, IMPORTANCE_REFERENCE)
        elif method == "nuts":
            rec = run_nuts(n, d, NUTS)
        else:
            rec = run_flowvi(method, n, d)
        rec["status"] = "ok"
    except Exception as err:  # noqa: BLE001 - a failed run is a result
        rec = {"status": "failed", "error": f"{type(err).__name__}: {err}"[:2000],
               "traceback": traceback.format_exc()[-4000:]}
    import jax
    import numpyro

    import flowvi

    rec.update(model=case, method=method, versions={"jax": jax.__version__, "numpyro": numpyro.__version__,
                                                    "flowvi": flowvi.__version__},
               x64=bool(jax.config.jax_enable_x64), device=str(jax.devices()[0]))
    pathlib.Path(out).write_text(json.dumps(rec, indent=1))


# ---------------------------------------------------------------- the parent process


def _subprocess(method: str, case: str, quick: bool, timeout: float, tmp: pathlib.Path, env: dict) -> dict:
    out, log = tmp / f"{case}-{method}.json", tmp / f"{case}-{method}.log"
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    rc, _ = run_spawn([sys.executable, "-m", "benchmarks.big_data", "--worker", method, case, out.as_posix(),
                       *(["--quick"] if quick else [])], timeout, log, env)
    wall = time.perf_counter() - t0
    if out.exists():
        rec = json.loads(out.read_text())
    else:
        rec = {"model": case, "method": method, "status": "timeout" if rc is None else "failed",
               "error": f"exceeded {timeout:.0f} s" if rc is None else f"worker exited with {rc}",
               "log": log.read_text(errors="replace")[-3000:]}
    rec.update(process_s=wall, load_average=load)
    return rec


def reference(n: int, d: int, quick: bool, refresh: bool, tmp: pathlib.Path, timeout: float) -> dict:
    """The cached NUTS reference of case (n, d); made (float64, in its own process) when missing or out of date."""
    case = case_name(n, d)
    path = (QUICK_REFERENCES if quick else REFERENCES) / f"big_data-{case}.json"
    want = digest(n, d)
    if path.exists() and not refresh:
        ref = json.loads(path.read_text())
        if ref.get("digest") == want:
            return ref
        print(f"[{case}] reference out of date (data generation changed): remaking it", flush=True)
    s = reference_settings(n, quick)
    how = (f"importance sampling, {s['draws']} draws" if s.get("method") == "importance" else
           f"NUTS {s['chains']} chains x {s['draws']} draws after {s['warmup']} warm-up")
    print(f"[{case}] reference: {how}, float64 ...", flush=True)
    rec = _subprocess("reference", case, quick, timeout, tmp, env={"JAX_ENABLE_X64": "1"})
    if rec["status"] != "ok":
        raise RuntimeError(f"{case}: the reference run failed: {rec.get('error')}\n{rec.get('log', '')}"
                           f"{rec.get('traceback', '')}")
    make = importance_reference_record if s.get("method") == "importance" else nuts_reference_record
    ref = make(case, want, rec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ref, indent=1) + "\n")
    print(f"[{case}] reference written to {path.relative_to(ROOT)}: {ref['quality']}, {rec['result_s']:.0f} s",
          flush=True)
    return ref


def nuts_reference_record(case: str, digest_: str, rec: dict) -> dict:
    """The cached form of a NUTS reference run `rec`."""
    return {"model": case, "digest": digest_,
            "made_with": {"sampler": "numpyro NUTS", **{k: rec[k] for k in (
                "chains", "warmup", "draws", "seed", "target_accept_prob", "x64", "versions", "device")},
                "seconds": round(rec["result_s"], 1), "load_average": round(rec["load_average"], 2)},
            "quality": {"max_rhat": round(rec["max_rhat"], 5), "min_ess": round(rec["min_ess"], 1),
                        "divergences": rec["divergences"], "mean_leapfrog_steps": round(rec["mean_leapfrog_steps"], 2)},
            "quantities": {k: {"mean": v[0], "sd": v[1], "ess": round(rec["ess"][k], 1)}
                           for k, v in rec["moments"].items()}}


def importance_reference_record(case: str, digest_: str, rec: dict) -> dict:
    """The cached form of an importance-sampling reference run `rec` (`benchmarks.importance_reference`)."""
    return {"model": case, "digest": digest_,
            "made_with": {"sampler": f"PSIS from the Laplace approximation's Student-t ({rec['dof']:g} dof)",
                          **{k: rec[k] for k in ("draws", "seed", "x64", "versions", "device")},
                          "seconds": round(rec["result_s"], 1), "load_average": round(rec["load_average"], 2)},
            "quality": {"k_hat": round(rec["k_hat"], 4), "ess": round(rec["ess"], 1),
                        "max_mcse_sd": round(rec["max_mcse_sd"], 4)},
            "quantities": {k: {"mean": v[0], "sd": v[1], "ess": round(rec["ess"], 1)}
                           for k, v in rec["moments"].items()}}


def parse_cases(text: str) -> list[tuple[int, int]]:
    """``"100000x10,1000000x50"`` -> ``[(100000, 10), (1000000, 50)]``."""
    out = []
    for part in filter(None, text.split(",")):
        n, _, d = part.partition("x")
        out.append((int(float(n)), int(d)))
    return out


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.big_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=None, help="comma-separated NxD, e.g. 100000x10,1e6x50 (default: "
                   + ", ".join(f"{n}x{d}" for n, d in CASES) + ")")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated from {', '.join(METHODS)}")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: N=10^4, d=5, a small reference kept out of git (benchmarks/.cache/big_data_quick)")
    p.add_argument("--refresh-references", action="store_true", help="remake the references even if cached")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per run (default 3600)")
    p.add_argument("--reference-timeout", type=float, default=6 * 3600.0, help="seconds per reference run")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results folder")
    p.add_argument("--worker", nargs=3, metavar=("METHOD", "CASE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is None:
        try:
            args.cases = parse_cases(args.cases) if args.cases else list(QUICK_CASES if args.quick else CASES)
        except ValueError:
            p.error(f"--cases {args.cases!r}: expected comma-separated NxD, e.g. 100000x10")
        args.methods = report.choices(p, "method", args.methods, METHODS)
    return args


def main(argv=None) -> dict | None:
    """Run the benchmark (or, with ``--worker``, one of its runs); print and write the table."""
    from benchmarks.vs_nuts import score

    args = parse_args(argv)
    if args.worker is not None:
        worker(*args.worker[:2], args.quick, args.worker[2])
        return None
    results = {"quick": args.quick, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpu_count": os.cpu_count(),
               "settings": {"subsample": SUBSAMPLE, "num_draws": NUM_DRAWS, "nuts": NUTS,
                            "reference": QUICK_REFERENCE if args.quick else
                            {"default": REFERENCE, "from_n_200000": LARGE_REFERENCE}},
               "runs": [], "references": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for n, d in args.cases:
            case = case_name(n, d)
            ref = reference(n, d, args.quick, args.refresh_references, tmp, args.reference_timeout)
            results["references"][case] = {k: ref[k] for k in ("made_with", "quality")}
            for method in args.methods:
                print(f"[{case}] {method} ...", flush=True)
                rec = _subprocess(method, case, args.quick, args.timeout, tmp, env={"JAX_ENABLE_X64": "0"})
                if rec["status"] == "ok":
                    rec.update(score(rec, ref))
                    noise = rec.get("grad_var_ratio")
                    print(f"[{case}] {method}: {rec['result_s']:.1f} s to the result, worst mean error "
                          f"{rec['mean_err_sd']:.3f} sd, sd ratio {rec['sd_ratio_min']:.3f}-{rec['sd_ratio_max']:.3f}"
                          + (f", gradient variance ratio {noise:.2e}" if noise is not None else ""), flush=True)
                else:
                    print(f"[{case}] {method}: {rec['status']}: {rec.get('error')}", flush=True)
                rec.pop("moments", None)
                results["runs"].append(rec)
    table = render(results)
    print("\n" + table)
    report.write_results(results, table, args.out, "big_data")
    return results


def render(results: dict) -> str:
    """The markdown table: one row per (case, method), then the references' quality."""
    s = results["settings"]
    lines = [f"# Large data: flowvi subsampled fits vs NUTS ({'quick' if results['quick'] else 'full'})", "",
             f"Logistic regression, N rows x d coefficients. flowvi: `fit(target, key)` defaults; cv and plain with "
             f"`subsample={s['subsample']}` (plain: `control_variates=False`), full without; {s['num_draws']} draws. "
             f"NUTS: {s['nuts']['chains']} chain x ({s['nuts']['warmup']} + {s['nuts']['draws']}). Seconds: cold, "
             "to the result (compilation included) / the whole process. Grad var ratio: minibatch variance of the "
             "target's gradient at posterior draws, control variates over plain (mean over draws; worst "
             "coordinate). Bar: mean error < 0.1 sd, sd ratio in 0.9-1.1.", "",
             "| case | method | result s | process s | worst mean err (sd) | sd ratio (min, max) | grad var ratio | "
             "bar | notes |", "|" + "---|" * 9]
    for r in results["runs"]:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['method']} | | {r.get('process_s', 0):.0f} | {r['status']} | | | | "
                         f"{str(r.get('error'))[:80]} |")
            continue
        noise = ""
        if r.get("grad_var_ratio") is not None:
            noise = f"{r['grad_var_ratio']:.2e} ({r['grad_var_ratio_worst']:.2e})"
        if r["method"].startswith("flowvi"):
            notes = f"{r['steps_run'][0]} steps, fit {r['fit_s']:.0f} s; cv: {str(r['control_variates'])[:40]}"
        else:
            notes = (f"{r['divergences']} div, R-hat {r['max_rhat']:.3f}, min ESS {r['min_ess']:.0f}, "
                     f"{r['mean_leapfrog_steps']:.1f} leapfrog steps")
        lines.append("| " + " | ".join([
            r["model"], r["method"], f"{r['result_s']:.1f}", f"{r['process_s']:.1f}",
            f"{r['mean_err_sd']:.3f} ({r['mean_err_at']})", f"{r['sd_ratio_min']:.3f}, {r['sd_ratio_max']:.3f}",
            noise, "pass" if r["meets_bar"] else "FAIL", notes]) + " |")
    lines += ["", "## References", "", "| case | made with | float64 | quality | seconds |", "|" + "---|" * 5]
    for case, ref in results["references"].items():
        w, q = ref["made_with"], ref["quality"]
        how = (f"{w['sampler']}, {w['draws']} draws" if "chains" not in w else
               f"NUTS {w['chains']} x {w['draws']} ({w['warmup']} warm-up)")
        quality = (f"k-hat {q['k_hat']:.3f}, ESS {q['ess']:.0f}, MCSE of a mean {q['max_mcse_sd']:.3f} sd"
                    if "k_hat" in q else f"max R-hat {q['max_rhat']:.4f}, min ESS {q['min_ess']:.0f}, "
                    f"{q['divergences']} divergences")
        lines.append(f"| {case} | {how} | {w['x64']} | {quality} | {w['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
