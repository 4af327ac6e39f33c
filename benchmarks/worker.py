"""One benchmark run in its own process: ``python -m benchmarks.worker SPEC_JSON OUT_JSON``.

SPEC_JSON holds target, method, steps, num_samples, learning_rate, seed,
time_budget and num_draws. The worker imports only the method's runner (and so
only its library), fits, evaluates the target on the fresh draws, computes
`benchmarks.metrics`, and writes a JSON record with ``status`` one of ``ok``,
``not installed``, ``skipped`` or ``failed``. ``--prepare TARGET`` only builds the
target (e.g. runs and caches the NUTS reference for ``logreg``).
"""

from __future__ import annotations

import importlib
import json
import resource
import sys
import time
import traceback


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _device_info() -> dict:
    """Backend, device kind and (where the backend reports it) the device's peak memory in MB."""
    import jax

    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    peak = (stats or {}).get("peak_bytes_in_use")
    return {"backend": jax.default_backend(), "device_kind": dev.device_kind,
            "device_peak_mb": None if peak is None else peak / 2**20}


def run_spec(spec: dict) -> dict:
    """Run one (target, method) spec and return its JSON-able record."""
    from benchmarks.runners import METHODS

    rec = {"target": spec["target"], "method": spec["method"], "status": "ok", "error": None,
           "python": sys.executable}
    t0 = time.perf_counter()
    try:
        runner = importlib.import_module(f"benchmarks.runners.{METHODS[spec['method']]}")
        from benchmarks.targets import TargetUnavailable, get_target

        try:
            target = get_target(spec["target"])
        except TargetUnavailable as e:
            return {**rec, "status": "skipped", "error": str(e)}
        out = runner.run(spec["target"], spec["method"], spec["steps"], spec["num_samples"],
                         spec["learning_rate"], spec["seed"], spec.get("time_budget"),
                         num_draws=spec.get("num_draws", 20_000), **spec.get("options", {}))
        import jax
        import numpy as np

        from benchmarks import metrics

        log_p = np.concatenate([np.asarray(jax.jit(jax.vmap(target.log_density))(c))
                                for c in np.array_split(out["draws"], max(1, len(out["draws"]) // 5000))])
        rec["metrics"] = metrics.compute(out["draws"], out["log_q"], log_p, target.reference)
        rec.update({k: v for k, v in out.items() if k not in ("draws", "log_q")})
        rec["num_draws"] = int(len(out["draws"]))
        rec["num_samples"] = spec["num_samples"]
        rec.update(_device_info())
        rec["reference"] = {k: v for k, v in target.reference.items() if k not in ("mean", "sd")}
    except ModuleNotFoundError as e:
        if e.name and (e.name.startswith("benchmarks") or e.name.startswith("flowvi.")):
            rec.update(status="failed", error=f"{type(e).__name__}: {e}",
                       traceback=traceback.format_exc()[-3000:])
        else:
            lib = METHODS[spec["method"]].removesuffix("_runner")
            rec.update(status="not installed",
                       error=f"{lib}: module {e.name!r} not installed in {sys.executable}")
    except Exception as e:  # noqa: BLE001 - every failure is recorded, not raised
        rec.update(status="failed", error=f"{type(e).__name__}: {e}"[:1000],
                   traceback=traceback.format_exc()[-3000:])
    rec["wall_s"] = time.perf_counter() - t0
    rec["peak_mb"] = _peak_mb()
    return rec


def main(argv: list[str] | None = None) -> None:
    """Entry point; see the module docstring."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--prepare":
        from benchmarks.targets import TargetUnavailable, get_target

        try:
            get_target(argv[1])
        except TargetUnavailable as e:
            print(f"skipped: {e}")
        return
    spec = json.loads(argv[0])
    rec = run_spec(spec)
    with open(argv[1], "w") as f:
        json.dump(rec, f, default=float)


if __name__ == "__main__":
    main()
