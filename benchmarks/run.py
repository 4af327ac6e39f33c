"""Benchmark CLI: ``python -m benchmarks.run [--quick] [--methods ...] [--targets ...]``.

Spawns one ``python -m benchmarks.worker`` subprocess per (target, method) with a
timeout, collects their JSON records (failures included), writes
``benchmarks/results/<mode>-<timestamp>.json`` and ``.md`` and prints the tables.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

from benchmarks import report
from benchmarks.runners import METHODS
from benchmarks.targets import is_target

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH_PYTHON = ROOT / ".benchvenv" / "bin" / "python"
ALL_TARGETS = ["banana2d", "banana10d", "funnel10d", "ring2d", "gauss50d", "logreg"]
NEEDS_PREPARE = {"logreg"}  # long NUTS reference, built once before its runs
QUICK = {"steps": 100, "targets": "banana2d,funnel10d", "timeout": 180.0, "time_budget": 2.0,
         "jobs": 2}


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {QUICK['steps']} steps on {QUICK['targets']}")
    p.add_argument("--methods", default="*", help="comma-separated names or globs, e.g. 'flowvi_*'")
    p.add_argument("--targets", default=None,
                   help=f"comma-separated from {ALL_TARGETS}, or gauss<N>d (the Gaussian in N dims)")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (default 2000)")
    p.add_argument("--mode", choices=["equal-steps", "equal-time"], default="equal-steps")
    p.add_argument("--time-budget", type=float, default=None,
                   help="equal-time: training seconds per method, excluding compilation (default 30)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per run (default 900)")
    p.add_argument("--num-samples", type=int, default=64, help="Monte Carlo batch per step")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--draws", type=int, default=20_000, help="fresh draws for the metrics")
    p.add_argument("--timing", choices=["full", "fast"], default=None,
                   help="full: per-step time from warm fits of two lengths (default); "
                        "fast: one warm fit (the --quick default)")
    p.add_argument("--flowvi-optimizer", choices=["default", "adam"], default="default",
                   help="flowvi's own optimiser (clipped Adam, cosine decay) or the peers' plain Adam")
    p.add_argument("--python", default=None,
                   help="interpreter for the workers (default .benchvenv/bin/python if present)")
    p.add_argument("--jobs", type=int, default=None,
                   help="parallel workers (default 1, --quick 2); > 1 distorts the timings")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results folder")
    a = p.parse_args(argv)
    a.steps = a.steps or (QUICK["steps"] if a.quick else 2000)
    a.targets = (a.targets or (QUICK["targets"] if a.quick else ",".join(ALL_TARGETS))).split(",")
    a.timeout = a.timeout or (QUICK["timeout"] if a.quick else 900.0)
    a.time_budget = a.time_budget or (QUICK["time_budget"] if a.quick else 30.0)
    a.timing = a.timing or ("fast" if a.quick else "full")
    a.jobs = a.jobs or (QUICK["jobs"] if a.quick else 1)
    a.python = a.python or (str(BENCH_PYTHON) if BENCH_PYTHON.exists() else sys.executable)
    pats = a.methods.split(",")
    a.methods = [m for m in METHODS if any(fnmatch.fnmatchcase(m, q) for q in pats)]
    unknown = [q for q in pats if not any(fnmatch.fnmatchcase(m, q) for m in METHODS)]
    if unknown or not a.methods:
        p.error(f"no method matches {unknown or pats}; known: {', '.join(METHODS)}")
    bad = [t for t in a.targets if not is_target(t)]
    if bad:
        p.error(f"unknown targets {bad}; known: {ALL_TARGETS} or gauss<N>d (any N)")
    return a


def _spawn(cmd: list[str], timeout: float, log: pathlib.Path, env: dict | None = None) -> tuple[int | None, str]:
    """Run `cmd` in its own session (with `env` added to the environment); kill its process group on timeout.

    Returns (rc, or None on timeout; the log's tail).
    """
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, **(env or {})})
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    return rc, log.read_text(errors="replace")[-2000:]


def make_spec(args, target: str, method: str) -> dict:
    """The worker's job description for one (target, method) under the parsed options `args`."""
    return {"target": target, "method": method, "steps": args.steps,
            "num_samples": args.num_samples, "learning_rate": args.learning_rate,
            "seed": args.seed, "num_draws": args.draws,
            "time_budget": args.time_budget if args.mode == "equal-time" else None,
            "options": {"timing": args.timing, "flowvi_optimizer": args.flowvi_optimizer}}


def run_one(args, target: str, method: str, tmp: pathlib.Path) -> dict:
    """One worker subprocess; always returns a record (``failed``/``timeout`` on trouble)."""
    spec = make_spec(args, target, method)
    out = tmp / f"{target}-{method}.json"
    t0 = time.perf_counter()
    rc, tail = _spawn([args.python, "-m", "benchmarks.worker", json.dumps(spec), str(out)],
                      args.timeout, tmp / f"{target}-{method}.log")
    if out.exists():
        rec = json.loads(out.read_text())
    else:
        status = "timeout" if rc is None else "failed"
        err = f"exceeded {args.timeout:.0f} s" if rc is None else f"worker exited with {rc}"
        rec = {"target": target, "method": method, "status": status, "error": err, "log": tail}
    rec["process_s"] = time.perf_counter() - t0
    return rec


def main(argv=None) -> dict:
    """Run the benchmark; return the results dict (also written to --out)."""
    args = parse_args(argv)
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"meta": {k: v for k, v in vars(args).items()},
               "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpu_count": os.cpu_count(),
               "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for target in args.targets:
            if target in NEEDS_PREPARE:
                rc, tail = _spawn([args.python, "-m", "benchmarks.worker", "--prepare", target],
                                  max(args.timeout, 3600.0), tmp / f"prepare-{target}.log")
                if rc != 0:
                    print(f"[prepare {target}] failed (rc={rc}): {tail[-500:]}", file=sys.stderr)
            jobs = [(target, m) for m in args.methods]
            with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
                for rec in pool.map(lambda tm: run_one(args, *tm, tmp), jobs):
                    results["runs"].append(rec)
                    print(f"[{rec['target']}] {rec['method']}: {rec['status']}"
                          f" ({rec['process_s']:.1f} s) {rec.get('error') or ''}",
                          file=sys.stderr, flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"{args.mode}-{stamp}.json"
    path.write_text(json.dumps(results, indent=1, default=float))
    md = report.markdown(results)
    path.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {path} and {path.with_suffix('.md')}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
