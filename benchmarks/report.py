"""Markdown tables from a results dict/JSON: ``python -m benchmarks.report RESULTS.json``."""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time

COLUMNS = [  # (header, getter, format)
    ("method", lambda r: r["method"], "{}"),
    ("steps", lambda r: r.get("steps"), "{:d}"),
    ("params", lambda r: r.get("n_params"), "{:d}"),
    ("ELBO", lambda r: r["metrics"]["elbo"], "{:.3f}"),
    ("KL", lambda r: r["metrics"]["kl"], "{:.3f}"),
    ("IS logZ err", lambda r: r["metrics"]["is_log_z_error"], "{:+.3f}"),
    ("k-hat", lambda r: r["metrics"]["khat"], "{:.2f}"),
    ("ESS %", lambda r: 100 * r["metrics"]["ess_frac"], "{:.1f}"),
    ("mean err (sd)", lambda r: r["metrics"]["mean_err_sd"], "{:.3f}"),
    ("log sd ratio", lambda r: r["metrics"]["log_sd_ratio"], "{:+.3f}"),
    ("compile s", lambda r: r.get("compile_s"), "{:.2f}"),
    ("s/1k steps", lambda r: r.get("s_per_1000"), "{:.2f}"),
    ("k draws/s", lambda r: r["num_samples"] / r["s_per_1000"], "{:.1f}"),
    ("peak MB", lambda r: r.get("peak_mb"), "{:.0f}"),
    ("device MB", lambda r: r.get("device_peak_mb"), "{:.0f}"),
]


def choices(parser, what: str, text: str, allowed) -> list[str]:
    """The comma-separated ``text`` as a list; ``parser.error`` on a name not in ``allowed`` (names `what`)."""
    names = [n for n in text.split(",") if n]
    for n in names:
        if n not in allowed:
            parser.error(f"unknown {what} {n!r}; expected some of {', '.join(allowed)}")
    return names


def _cell(rec, get, fmt) -> str:
    try:
        v = get(rec)
    except (KeyError, TypeError, ZeroDivisionError):
        return ""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a" if rec.get("status") == "ok" else ""
    return fmt.format(v)


def table(runs: list[dict]) -> str:
    """One markdown table for the runs of a single target; failures listed below it."""
    lines = ["| " + " | ".join(h for h, _, _ in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    notes = []
    for r in runs:
        if r.get("status") == "ok":
            lines.append("| " + " | ".join(_cell(r, g, f) for _, g, f in COLUMNS) + " |")
            if r.get("metrics", {}).get("nonfinite"):
                notes.append(f"- {r['method']}: {r['metrics']['nonfinite']} non-finite draws dropped")
        else:
            first = (r.get("error") or "").strip().splitlines()[:1]
            notes.append(f"- {r['method']}: **{r.get('status')}**: {first[0] if first else ''}")
    return "\n".join(lines + ([""] + notes if notes else []))


def markdown(results: dict) -> str:
    """All tables (one per target) with a header describing the settings."""
    m = results.get("meta", {})
    head = (f"# flowvi benchmark ({m.get('mode')}, steps={m.get('steps')}, "
            f"batch={m.get('num_samples')}, lr={m.get('learning_rate')}, draws={m.get('draws')}"
            + (f", time budget={m.get('time_budget')} s" if m.get("mode") == "equal-time" else "")
            + f", {results.get('cpu_count')} CPUs, {results.get('started')})")
    if m.get("timing") == "fast":
        head += ("\n\nTiming `fast`: s/1k steps is one warm fit's seconds per step, including any"
                 " fixed per-call cost (NumPyro's `svi.run` re-traces on every call); rough.")
    out = [head]
    for r in results["runs"]:
        r.setdefault("num_samples", m.get("num_samples"))  # records from before the field existed
    for t in dict.fromkeys(r["target"] for r in results["runs"]):
        out += ["", f"## {t}", "", table([r for r in results["runs"] if r["target"] == t])]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(markdown(json.load(f)))


def write_results(results: dict, table: str, out, name: str) -> pathlib.Path:
    """Write ``<out>/<name>-<timestamp>.json`` (the results) and ``.md`` (the table); return the JSON path."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    path.with_suffix(".md").write_text(table)
    print(f"wrote {path} and .md")
    return path
