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


def test_the_profile_splits_the_fit_into_its_phases_and_the_training_loop_into_compiling_and_steps():
    phases = {"import": 1.0, "target": 0.5, "fit": 0.5, "fit: warm start": 1.0, "fit: setup": 0.2,
              "fit: train": 4.0, "fit: after": 0.3, "draws": 0.2, "diagnose": 0.1, "export": 0.1}
    compiles = [{"phase": "fit: train", "kind": "compile", "name": "jit(_run_chunk)", "seconds": 2.0},
                {"phase": "fit: warm start", "kind": "compile", "name": "jit(climb)", "seconds": 0.5}]
    flowvi = {**_record("flowvi default (cold)", "flowvi", "cold", 10.0, [0.0], [1.0], verdict="good", k_hat=0.3,
                        steps=1000), "phases": phases, "compiles": compiles}
    nuts = _record("NUTS 4 chains (cold)", "nuts", "cold", 4.0, [0.0], [1.0], chains=4, max_rhat=1.0,
                   min_ess=900.0, divergences=0)
    row = next(line for line in latency.profile([flowvi, nuts]).splitlines() if "flowvi default" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    # total, import, target, probe, warm start (compile), setup, training (compile), after, fit compiling,
    # steps, ms/step, draws+diagnose+export, NUTS, ratio
    assert cells[2:] == ["10.0", "1.0", "0.5", "0.5", "1.0 (0.5)", "0.2", "4.0 (2.0)", "0.3", "2.5", "1000", "2.00",
                         "0.4", "4.0", "2.50"]
    # The model table's fit column adds up the fit's phases and their compilations.
    assert "| 6.00 (2.50) |" in latency.table([flowvi, nuts])


def test_a_phase_that_recurs_accumulates_its_time(monkeypatch):
    class Monitoring:
        register_event_duration_secs_listener = register_event_listener = staticmethod(lambda f: None)

    clock = iter([1.0, 3.0, 4.0, 7.0, 8.0])
    monkeypatch.setattr(latency.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(latency, "START", 0.0)
    phases = latency.Phases(type("FakeJax", (), {"monitoring": Monitoring}))
    for name in ("fit: train", "fit: after", "fit: train", "fit: after", "end"):
        phases.next(name)
    # import 0-1, train 1-3 and 4-7, after 3-4 and 7-8.
    assert phases.rows == {"import": 1.0, "fit: train": 5.0, "fit: after": 2.0}
