"""Time to the first answer: cold-process wall time of flowvi and of NumPyro NUTS on the shipped models.

For each model (eight schools, logistic regression, hierarchical regression in
``models/``) this runs, each in a fresh subprocess and all in one invocation:

* ``flowvi`` with its defaults: ``Target.from_numpyro``, ``fit``, ``--draws``
  constrained draws (``sample_posterior``), ``diagnose`` with as many draws, and
  the ArviZ export (``to_arviz`` of the diagnosed draws); once with an empty
  persistent compilation cache (``flowvi.cache.enable`` on a new folder: the
  cold run, which fills it) and once more with that cache warm;
* NumPyro NUTS with ``--chains`` chains (default 1 and 4) of ``--warmup`` +
  ``--samples`` iterations (1000 + 1000), chains in parallel on as many host
  devices, plus ``numpyro.diagnostics.summary``; cold (no cache), and again
  with JAX's cache warm.

Every worker reports its phases (import, target construction, fit or MCMC,
drawing, diagnostics, export) in wall seconds, and every XLA compilation (name
and seconds, from ``jax.monitoring``) with the phase it fell in, and the
persistent cache's hits. "total" is the subprocess's wall time as the parent
saw it, interpreter start included. Moments are compared on the constrained
latent sites against the NUTS run with the most chains: the worst coordinate's
``|mean - mean_ref| / sd_ref`` and ``|log(sd / sd_ref)|`` (the reference's own
Monte Carlo error is about ``1 / sqrt(ESS)`` in those units, 0.02-0.03 at 4000
draws).

Inside ``fit`` the flowvi worker also times its steps (checks and the
target probe, the Gaussian warm start, setup, the training loop, what comes
after), by wrapping ``flowvi.reverse_kl``'s ``_warm_start`` and ``_train``;
the "profile" table splits the training loop into its compilations and its
steps (ms per step). ``--models all`` runs every model of `benchmarks.vs_nuts`.

Run: ``python -m benchmarks.latency [--quick] [--models eight_schools|all] [--families default,iaf]``.
Results: ``benchmarks/results/latency-<time>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

START = time.perf_counter()  # a worker's clock starts here, before its heavy imports

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = {name: f"models/{name}.py" for name in (
    "eight_schools", "logistic_regression", "hierarchical_regression", "eight_schools_centered", "constrained",
    "scaled_regression", "ar_timeseries", "hsgp_heteroscedastic", "flat_prior_regression")}
"""The models of `benchmarks.vs_nuts`; the first three are the default ``--models``."""
DEFAULT_MODELS = "eight_schools,logistic_regression,hierarchical_regression"
FIT_PHASES = (("fit", "checks and probe"), ("fit: warm start", "warm start"), ("fit: setup", "setup"),
              ("fit: train", "training"), ("fit: after", "after training"))
"""The phases `flowvi_worker` splits ``fit`` into, and their column names in the profile."""
QUICK = {"models": "eight_schools", "steps": 100, "draws": 400, "warmup": 100, "samples": 100}
COMPILE = "/jax/core/compile/backend_compile_duration"
TRACE = "/jax/core/compile/jaxpr_trace_duration"
LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
HIT = "/jax/compilation_cache/cache_hits"


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (the ``--worker`` ones are for the subprocesses)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: eight schools, 100 steps, 400 draws, "
                   "NUTS 100 + 100")
    p.add_argument("--models", default=None, help=f"comma-separated from {', '.join(MODELS)}")
    p.add_argument("--families", default="default",
                   help="comma-separated flow families for flowvi (default: fit's own default family)")
    p.add_argument("--steps", type=int, default=None, help="flowvi steps (default: fit's default)")
    p.add_argument("--draws", type=int, default=None, help="flowvi draws and diagnostics draws (default 4000)")
    p.add_argument("--chains", default="1,4", help="NUTS chain counts (comma-separated; empty: no NUTS)")
    p.add_argument("--warmup", type=int, default=None, help="NUTS warm-up iterations (default 1000)")
    p.add_argument("--samples", type=int, default=None, help="NUTS draws per chain (default 1000)")
    p.add_argument("--no-warm", action="store_true", help="skip the runs with the cache warm")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per worker")
    p.add_argument("--python", default=sys.executable, help="interpreter for the workers")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results folder")
    p.add_argument("--worker", choices=["flowvi", "nuts"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--family", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    p.add_argument("--num-chains", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    defaults = {"models": DEFAULT_MODELS, "steps": None, "draws": 4000, "warmup": 1000, "samples": 1000}
    for name, value in (QUICK if a.quick else defaults).items():
        if getattr(a, name) is None:
            setattr(a, name, value)
    if a.models == "all":
        a.models = ",".join(MODELS)
    for name in ("draws", "warmup", "samples"):
        if getattr(a, name) is None:
            setattr(a, name, defaults[name])
    return a


# --- the workers (one process each) -------------------------------------------------------------

class Phases:
    """Wall time per phase, and the compilations and cache hits that happened in each."""

    def __init__(self, jax):
        self.current, self.started, self.rows, self.compiles, self.hits = "import", START, {}, [], {}
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        jax.monitoring.register_event_listener(self._on_event)

    def _on_duration(self, event, seconds, fun_name=None, **kwargs):
        kind = {COMPILE: "compile", TRACE: "trace", LOWER: "lower"}.get(event)
        if kind:
            self.compiles.append({"phase": self.current, "kind": kind, "name": fun_name, "seconds": seconds})

    def _on_event(self, event, **kwargs):
        if event == HIT:
            self.hits[self.current] = self.hits.get(self.current, 0) + 1

    def next(self, name: str) -> None:
        now = time.perf_counter()
        self.rows[self.current] = self.rows.get(self.current, 0.0) + now - self.started  # a phase may recur
        self.current, self.started = name, now

    def report(self) -> dict:
        self.next("end")
        return {"phases": self.rows, "compiles": self.compiles, "cache_hits": self.hits}


def _load_model(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _moments(samples: dict, sites) -> dict:
    import numpy as np

    return {k: {"mean": np.asarray(samples[k], np.float64).reshape(len(samples[k]), -1).mean(0).tolist(),
                "sd": np.asarray(samples[k], np.float64).reshape(len(samples[k]), -1).std(0).tolist()}
            for k in sites}


def _time_fit_steps(phases: Phases) -> None:
    """Make `phases` switch at the warm start and the training loop inside ``flowvi.fit`` (see `FIT_PHASES`)."""
    import flowvi.reverse_kl as reverse_kl

    def between(inner, before: str, after: str):
        def timed(*args, **kwargs):
            phases.next(before)
            try:
                return inner(*args, **kwargs)
            finally:
                phases.next(after)
        return timed

    reverse_kl._warm_start = between(reverse_kl._warm_start, "fit: warm start", "fit: setup")
    reverse_kl._train = between(reverse_kl._train, "fit: train", "fit: after")


def flowvi_worker(a: argparse.Namespace) -> dict:
    """Import, target, fit, draws, diagnostics, export of one model with flowvi's defaults."""
    import jax

    phases = Phases(jax)
    import flowvi

    phases.next("cache")
    folder = flowvi.cache.enable(a.cache) if a.cache else None
    phases.next("target")
    module = _load_model(MODELS[a.model])
    target = flowvi.Target.from_numpyro(module.model, *module.args, **module.kwargs)
    _time_fit_steps(phases)
    phases.next("fit")
    options = {} if a.family == "default" else {"flow": a.family}
    if a.steps:
        options["steps"] = a.steps
    post = flowvi.fit(target, key=jax.random.key(0), progress=False, **options)
    jax.block_until_ready(post.params)
    phases.next("draws")
    draws = jax.block_until_ready(post.sample_posterior(jax.random.key(1), a.draws))
    phases.next("diagnose")
    diag = post.diagnose(jax.random.key(2), a.draws)
    phases.next("export")
    post.to_arviz(jax.random.key(2), a.draws, diagnostics=diag)
    out = phases.report()
    return {**out, "flow": post.flow.name, "steps": int(post.steps_run[0]), "cache_folder": str(folder),
            "verdict": diag.verdict.split(":")[0], "k_hat": float(diag.k_hat),
            "moments": _moments(draws, target.site_shapes)}


def nuts_worker(a: argparse.Namespace) -> dict:
    """Import, target, NUTS, summary of one model with NumPyro."""
    import jax

    phases = Phases(jax)
    import numpy as np
    from numpyro.diagnostics import summary
    from numpyro.infer import MCMC, NUTS

    if a.cache:
        jax.config.update("jax_compilation_cache_dir", a.cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    phases.next("target")
    module = _load_model(MODELS[a.model])
    phases.next("fit")
    parallel = jax.local_device_count() >= a.num_chains
    from benchmarks.vs_nuts import NUTS_DENSE  # as in vs_nuts: a dense mass matrix where NUTS needs one

    kernel = NUTS(module.model, dense_mass=a.model in NUTS_DENSE)
    mcmc = MCMC(kernel, num_warmup=a.warmup, num_samples=a.samples, num_chains=a.num_chains,
                chain_method="parallel" if parallel else "sequential", progress_bar=False)
    mcmc.run(jax.random.key(0), *module.args, **module.kwargs)
    samples = jax.block_until_ready(mcmc.get_samples())
    phases.next("diagnose")
    stats = summary(mcmc.get_samples(group_by_chain=True))
    rhat = max(float(np.nanmax(s["r_hat"])) for s in stats.values())
    ess = min(float(np.nanmin(s["n_eff"])) for s in stats.values())
    out = phases.report()
    sites = list(samples)  # (tracing the model to list them would sample it, which an improper prior cannot do)
    return {**out, "chains": a.num_chains, "chain_method": mcmc.chain_method, "max_rhat": rhat, "min_ess": ess,
            "divergences": int(np.sum(mcmc.get_extra_fields()["diverging"])), "moments": _moments(samples, sites)}


# --- the driver -------------------------------------------------------------------------------

def _spawn(a: argparse.Namespace, label: str, extra: list[str], env_extra: dict | None = None) -> dict:
    argv = [a.python, "-m", "benchmarks.latency", "--model", a.model_name, "--draws", str(a.draws),
            "--warmup", str(a.warmup), "--samples", str(a.samples), *extra]
    if a.steps:
        argv += ["--steps", str(a.steps)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWVI_CACHE": "", **(env_extra or {})}
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=a.timeout)
    except subprocess.TimeoutExpired:
        return {"label": label, "status": "timeout", "total": time.perf_counter() - start}
    total = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"label": label, "status": "failed", "total": total, "error": done.stderr[-3000:]}
    return {"label": label, "status": "ok", "total": total, **json.loads(lines[-1])}


def runs_for_model(a: argparse.Namespace, model: str) -> list[dict]:
    """The flowvi (cold, warm) and NUTS (per chain count: cold, warm) workers of one model, in order."""
    a.model_name = model
    records = []
    for family in a.families.split(","):
        with tempfile.TemporaryDirectory(prefix="flowvi-latency-") as folder:
            for state in ("cold", "warm")[:1 if a.no_warm else 2]:
                rec = _spawn(a, f"flowvi {family} ({state})",
                             ["--worker", "flowvi", "--family", family, "--cache", folder])
                records.append({"model": model, "method": "flowvi", "family": family, "cache": state, **rec})
                _say(records[-1])
    for chains in [int(c) for c in a.chains.split(",") if c]:
        with tempfile.TemporaryDirectory(prefix="nuts-latency-") as folder:
            for state in ("cold", "warm")[:1 if a.no_warm else 2]:
                extra = ["--worker", "nuts", "--num-chains", str(chains)]
                if state == "warm" or not a.no_warm:  # the cold run fills the cache the warm one reads
                    extra += ["--cache", folder]
                env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={chains}"}
                rec = _spawn(a, f"NUTS {chains} chain{'s' if chains > 1 else ''} ({state})", extra, env)
                records.append({"model": model, "method": "nuts", "chains": chains, "cache": state, **rec})
                _say(records[-1])
    compare_moments(records)
    return records


def _write(a: argparse.Namespace, meta: dict, records: list[dict], stamp: str) -> pathlib.Path:
    """Write (again) the JSON and Markdown of the runs so far; returns the JSON's path."""
    out_dir = pathlib.Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"latency-{stamp}.json"
    path.write_text(json.dumps({"meta": meta, "runs": records}, indent=1))
    text = (f"# Time to the first answer ({meta['backend']}, {meta['cpus']} CPUs, jax {meta['jax']}, "
            f"{meta['time']})\n\n" + table(records) + "\n## Where flowvi's time goes\n\n" + profile(records) + "\n")
    path.with_suffix(".md").write_text(text)
    return path


def _say(rec: dict) -> None:
    print(f"  {rec['model']}: {rec['label']}: {rec['status']}, {rec['total']:.1f} s"
          + (f"\n{rec['error']}" if rec["status"] == "failed" else ""), flush=True)


def compare_moments(records: list[dict]) -> None:
    """Add ``mean_err`` and ``log_sd_err`` (worst coordinate, against the NUTS run with most chains) to each record."""
    import numpy as np

    refs = [r for r in records if r["method"] == "nuts" and r["status"] == "ok" and r["cache"] == "cold"]
    if not refs:
        return
    ref = max(refs, key=lambda r: r["chains"])["moments"]
    for rec in records:
        if rec["status"] != "ok":
            continue
        mean_err, sd_err = [], []
        for site, m in ref.items():
            if site not in rec["moments"]:
                continue
            mine, sd = rec["moments"][site], np.asarray(m["sd"])
            vary = sd > 0  # a coordinate fixed by its constraint (a correlation matrix's diagonal) has sd 0
            mean_err.append((np.abs(np.asarray(mine["mean"]) - np.asarray(m["mean"])) / np.where(vary, sd, 1))[vary])
            sd_err.append(np.abs(np.log(np.asarray(mine["sd"])[vary] / sd[vary])))
        if mean_err:
            rec["mean_err"] = float(np.max(np.concatenate(mean_err)))
            rec["log_sd_err"] = float(np.max(np.concatenate(sd_err)))


def _seconds(rec: dict, phase: str, kind: str = "compile") -> float:
    """Seconds of `kind` events in `phase` (`WHOLE_FIT`: in any of the fit's phases)."""
    return sum(c["seconds"] for c in rec.get("compiles", []) if _in_phase(c["phase"], phase) and c["kind"] == kind)


WHOLE_FIT = "fit*"
"""The phase name that stands for all of `FIT_PHASES` together."""


def _in_phase(name: str, phase: str) -> bool:
    return name == phase or (phase == WHOLE_FIT and (name == "fit" or name.startswith("fit: ")))


def _phase(rec: dict, phase: str) -> float | None:
    """Wall seconds of `phase` (`WHOLE_FIT`: all of the fit's phases together); None if it never ran."""
    found = [v for k, v in rec["phases"].items() if _in_phase(k, phase)]
    return sum(found) if found else None


def table(records: list[dict]) -> str:
    """Markdown: one section per model, one row per run, phases and compilation in seconds."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in records):
        rows = [r for r in records if r["model"] == model]
        lines += [f"## {model}", "", "| run | total s | import | target | fit/MCMC (compile) | draws | diagnose | "
                  "export | compiles | trace+lower s | cache hits | mean err (sd) | log sd err | check |",
                  "|---|" + "---:|" * 12 + "---|"]
        for r in rows:
            if r["status"] != "ok":
                lines.append(f"| {r['label']} | {r['total']:.1f} | {r['status']} |" + " |" * 11)
                continue
            cell = lambda name, r=r: "" if _phase(r, name) is None else f"{_phase(r, name):.2f}"  # noqa: E731
            fit = f"{_phase(r, WHOLE_FIT):.2f} ({_seconds(r, WHOLE_FIT):.2f})"
            check = (f"{r['verdict']}, k-hat {r['k_hat']:.2f}" if r["method"] == "flowvi" else
                     f"R-hat {r['max_rhat']:.3f}, ESS {r['min_ess']:.0f}, {r['divergences']} div.")
            compiles = [c for c in r["compiles"] if c["kind"] == "compile"]
            staging = sum(c["seconds"] for c in r["compiles"] if c["kind"] != "compile")
            lines.append(f"| {r['label']} | {r['total']:.1f} | {cell('import')} | {cell('target')} | {fit} | "
                         f"{cell('draws')} | {cell('diagnose')} | {cell('export')} | {len(compiles)} "
                         f"({sum(c['seconds'] for c in compiles):.1f} s) | {staging:.1f} | "
                         f"{sum(r['cache_hits'].values())} | "
                         f"{r.get('mean_err', float('nan')):.3f} | {r.get('log_sd_err', float('nan')):.3f} | {check} |")
        lines += ["", *ratios(rows), ""]
        for r in rows:
            if r["status"] == "ok" and r["method"] == "flowvi" and r["cache"] == "cold":
                top = sorted((c for c in r["compiles"] if c["kind"] == "compile"), key=lambda c: -c["seconds"])
                lines.append(f"{r['label']}, largest compilations: " + ", ".join(
                    f"{c['name']} ({c['phase']}) {c['seconds']:.2f} s" for c in top[:8]))
        lines.append("")
    return "\n".join(lines)


def profile(records: list[dict]) -> str:
    """Markdown: where each flowvi run's time goes (wall s; compile s inside it), beside NUTS's total."""
    head = ["model", "run", "total", "import", "target", *(title for _, title in FIT_PHASES), "fit: compiling",
            "steps", "ms/step", "draws+diagnose+export", "NUTS total (most chains)", "flowvi / NUTS"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for r in records:
        if r["method"] != "flowvi" or r["status"] != "ok":
            continue
        nuts = [n for n in records if n["model"] == r["model"] and n["method"] == "nuts" and n["status"] == "ok"
                and n["cache"] == "cold"]
        ref = max(nuts, key=lambda n: n["chains"])["total"] if nuts else float("nan")
        cells = []
        for phase, _ in FIT_PHASES:
            wall, compiling = r["phases"].get(phase, 0.0), _seconds(r, phase)
            cells.append(f"{wall:.1f}" + (f" ({compiling:.1f})" if compiling >= 0.05 else ""))
        train = r["phases"].get("fit: train", 0.0) - _seconds(r, "fit: train")
        rest = sum(r["phases"].get(k, 0.0) for k in ("draws", "diagnose", "export"))
        lines.append(f"| {r['model']} | {r['label']} | {r['total']:.1f} | {r['phases'].get('import', 0.0):.1f} | "
                     f"{r['phases'].get('target', 0.0):.1f} | "
                     + " | ".join(cells) + f" | {_seconds(r, WHOLE_FIT):.1f} | {r['steps']} | "
                     f"{1000 * train / max(r['steps'], 1):.2f} | {rest:.1f} | {ref:.1f} | {r['total'] / ref:.2f} |")
    return "\n".join(lines)


def ratios(rows: list[dict]) -> list[str]:
    """The goals as ratios: flowvi cold / NUTS (most chains, cold); flowvi warm / flowvi cold."""
    ok = {r["label"]: r for r in rows if r["status"] == "ok"}
    nuts = [r for r in ok.values() if r["method"] == "nuts" and r["cache"] == "cold"]
    out = []
    for r in ok.values():
        if r["method"] != "flowvi" or r["cache"] != "cold":
            continue
        if nuts:
            ref = max(nuts, key=lambda n: n["chains"])
            out.append(f"- {r['label']} / {ref['label']}: {r['total'] / ref['total']:.2f}")
        warm = ok.get(r["label"].replace("(cold)", "(warm)"))
        if warm:
            out.append(f"- {warm['label']} / {r['label']}: {warm['total'] / r['total']:.2f}")
    return out


def main(argv=None) -> dict:
    """Run every worker in turn; print and write the tables; return ``{"meta", "runs"}``."""
    a = parse_args(argv)
    if a.worker:
        a.model_name = a.model
        result = flowvi_worker(a) if a.worker == "flowvi" else nuts_worker(a)
        print(json.dumps(result))
        return result
    import jax  # only for the record of versions and devices

    meta = {"options": {k: v for k, v in vars(a).items() if k not in ("worker", "model", "family", "cache")},
            "jax": jax.__version__, "backend": jax.default_backend(), "cpus": os.cpu_count(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    records, stamp = [], time.strftime("%Y%m%d-%H%M%S")
    for model in a.models.split(","):
        print(f"{model}:", flush=True)
        records += runs_for_model(a, model)
        path = _write(a, meta, records, stamp)  # after every model, so a long run keeps what it measured
    print("\n" + path.with_suffix(".md").read_text() + f"\nwrote {path} and {path.with_suffix('.md')}", flush=True)
    return {"meta": meta, "runs": records}


if __name__ == "__main__":
    main()
