"""benchmarks.latency's bookkeeping (the workers themselves run in `python -m benchmarks.latency --quick`)."""

import math

from benchmarks import latency


def _record(label, method, cache, total, mean, sd, **extra):
    compiles = [{"phase": "fit", "kind": "compile", "name": "jit(_run_chunk)", "seconds": 2.0},
                {"phase": "fit", "kind": "trace", "name": "_run_chunk", "seconds": 0.5}]
    phases = {"import": 1.0, "target": 0.5, "fit": 3.0, "draws": 0.2, "diagnose": 0.1, "export": 0.1}
    return {"model": "m", "label": label, "method": method, "cache": cache, "status": "ok", "total": total,
            "phases": phases, "compiles": compiles, "cache_hits": {"fit": 1} if cache == "warm" else {},
            "moments": {"a": {"mean": mean, "sd": sd}}, **extra}


def test_moments_are_compared_with_the_nuts_run_with_most_chains_and_goals_are_ratios():
    flowvi = dict(verdict="good", k_hat=0.3)
    nuts = dict(max_rhat=1.0, min_ess=900.0, divergences=0)
    records = [_record("flowvi default (cold)", "flowvi", "cold", 12.0, [0.5, 1.0], [2.0, 1.0], **flowvi),
               _record("flowvi default (warm)", "flowvi", "warm", 3.0, [0.5, 1.0], [2.0, 1.0], **flowvi),
               _record("NUTS 1 chain (cold)", "nuts", "cold", 5.0, [0.0, 1.0], [1.0, 1.0], chains=1, **nuts),
               _record("NUTS 4 chains (cold)", "nuts", "cold", 8.0, [0.0, 2.0], [1.0, 2.0], chains=4, **nuts)]
    latency.compare_moments(records)
    # Against NUTS 4 chains: means (0, 2), sds (1, 2).
    assert math.isclose(records[0]["mean_err"], 0.5) and math.isclose(records[0]["log_sd_err"], math.log(2.0))
    assert math.isclose(records[2]["mean_err"], 0.5) and records[3]["mean_err"] == 0.0
    text = latency.table(records)
    assert "- flowvi default (cold) / NUTS 4 chains (cold): 1.50" in text
    assert "- flowvi default (warm) / flowvi default (cold): 0.25" in text
    assert "jit(_run_chunk) (fit) 2.00 s" in text and "| 3.00 (2.00) |" in text
