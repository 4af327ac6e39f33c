"""The ``flowvi`` command: fit a model file, print diagnostics, write posterior.nc, report.png, flow.flowvi.

Examples:
    flowvi fit models/eight_schools.py --flow spline_coupling --steps 5000 --runs 4 --seed 0
    flowvi fit models/banana.py --flow iaf --layers 6 --hidden 32,32
    flowvi demo
"""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import pathlib
import sys
import tempfile
import textwrap
import warnings

from flowvi import flows
from flowvi.cli.model_file import ModelFile, ModelFileError, load_model_file
from flowvi.forward_kl import fit_samples
from flowvi.neutra import neutra
from flowvi.objectives import ESTIMATORS
from flowvi.reverse_kl import fit

OUTPUTS = ("posterior.nc", "report.png", "flow.flowvi")
# Options of one objective only: dest -> the kinds of model file they apply to.
REVERSE_KL_ONLY = ("steps", "max_steps", "init", "num_samples", "estimator", "subsample", "devices")
SAMPLES_ONLY = ("epochs", "batch_size")


def _signature_defaults(function) -> dict:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


_FIT, _FIT_SAMPLES = _signature_defaults(fit), _signature_defaults(fit_samples)
_NEUTRA = _signature_defaults(neutra)
# --neutra: NUTS in the fitted flow's base space (flowvi.neutra); its options, dest -> neutra's keyword.
MCMC_OPTIONS = {"mcmc_warmup": "num_warmup", "mcmc_samples": "num_samples", "mcmc_chains": "num_chains"}
# The library's defaults, read from the signatures of fit and fit_samples; runs, seed and draws are the CLI's own.
DEFAULTS = {
    "steps": _FIT["steps"], "max_steps": _FIT["max_steps"], "init": _FIT["init"],
    "num_samples": _FIT["num_samples"], "estimator": _FIT["estimator"], "runs": 4,
    "patience": _FIT["patience"], "epochs": _FIT_SAMPLES["max_epochs"], "batch_size": _FIT_SAMPLES["batch_size"],
    "samples_patience": _FIT_SAMPLES["patience"], "learning_rate": _FIT["learning_rate"],
    "samples_learning_rate": _FIT_SAMPLES["learning_rate"], "seed": 0, "draws": 1000,
}
# Every hyperparameter of every family, with the families that take it and their defaults.
HYPERPARAMETERS: dict[str, dict[str, object]] = {}
for _family in flows.FAMILIES:
    for _name, _default in flows.hyperparameter_defaults(_family).items():
        if _name != "context_dim":  # a conditional fit's context size comes from the samples file's `context`
            HYPERPARAMETERS.setdefault(_name, {})[_family] = _default
# Flags for flow hyperparameters: dest -> the family keyword (one flag per hyperparameter).
HYPERPARAMETER_FLAGS = {name: name for name in HYPERPARAMETERS}
# `flowvi demo`: the banana, with settings that fit it well in well under a minute on two cores.
DEMO_MODEL = "banana"
DEMO_DEFAULTS = {"flow": "spline_coupling", "steps": 2000, "num_samples": 256, "runs": 2,
                 "draws": 2000, "out": "runs/demo"}
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_STATUS = ("exit status: 0 success; 1 the fit or its diagnostics failed, or an output could not be written; "
               "2 bad input (a missing model file, a file that fails to import or defines no target, an invalid "
               "option, an --out that cannot be written, no netCDF engine for posterior.nc), found before "
               "fitting; 130 interrupted (Ctrl-C): the fit stops at the end of its current chunk and the "
               "outputs are written for the fit so far (a second Ctrl-C aborts without them).")
NUMPY_NAN_NOTES = (r"(invalid value|divide by zero|overflow) encountered|All-NaN (slice|axis)|Mean of empty slice|"
                   r"Degrees of freedom")
CACHE_NOTE = ("compilation cache: compiled programs are kept in $FLOWVI_CACHE_DIR (default ~/.cache/flowvi/jax), "
              "so a second fit of the same model skips compiling; FLOWVI_CACHE=0 turns the cache off, and "
              "deleting the folder is safe.")
OUT_HELP = ("output directory, created if missing (default {default}); outputs already in it are replaced: each "
            "is written to a temporary file beside it and renamed over the old one, so a failed write leaves "
            "the old file")


class CliError(Exception):
    """Bad input; the message is the one line the user sees."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CliError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def main(argv: list[str] | None = None) -> int:
    """Run the command line with `argv` (default ``sys.argv[1:]``); return the exit status.

    Exit status: 0 success; 1 the fit or its diagnostics failed, or an output
    could not be written; 2 bad input (a missing model file, one that fails to
    import or defines no target, an invalid option, an unusable ``--out``, no
    netCDF engine), found before fitting, with a one-line reason on stderr;
    130 interrupted by Ctrl-C (the outputs hold the fit so far).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        _enable_cache()
        return run(args)
    except CliError as err:
        print(err, file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as err:  # --help and --version
        return err.code if isinstance(err.code, int) else EXIT_OK
    except KeyboardInterrupt:
        print("flowvi: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `flowvi fit ... | head`
        sys.stderr.close()
        return EXIT_FAILED


def _enable_cache() -> None:
    """JAX's persistent compilation cache (`flowvi.cache`): on unless FLOWVI_CACHE=0; a bad folder is one line."""
    import flowvi.cache

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flowvi.cache.enable_or_warn()
    for warning in caught:
        print(f"flowvi: warning: {warning.message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``flowvi`` and its ``fit`` and ``demo`` commands."""
    from flowvi._version import __version__

    parser = _Parser(
        prog="flowvi", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Normalising-flow variational inference: fit a flow to a model file, print "
                    "diagnostics and write posterior.nc (ArviZ), report.png and flow.flowvi.",
        epilog=textwrap.dedent("""\
            examples:
              flowvi demo
              flowvi fit models/banana.py --flow iaf
              flowvi fit models/eight_schools.py --flow spline_coupling --steps 5000 --runs 4 --seed 0 \\
                  --out runs/eight_schools

            """) + "\n" + textwrap.fill(EXIT_STATUS, 100) + "\n\n" + textwrap.fill(CACHE_NOTE, 100))
    parser.add_argument("--version", action="version", version=f"flowvi {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{fit,demo}", parser_class=_Parser)

    fit = commands.add_parser(
        "fit", help="fit a flow to a model file", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Fit a normalising flow to the target a Python model file defines:
              log_density (x: (dim,) -> scalar) and dim, optionally names  -> reverse KL (flowvi.fit)
              log_prior, log_likelihood ((x, one row) -> scalar), data (rows on axis 0) and dim,
                optionally names (for --subsample and --devices)           -> reverse KL (flowvi.fit)
              a NumPyro model, with its data in args (tuple) / kwargs (dict) -> reverse KL (flowvi.fit)
              samples, an (n, dim) array                                  -> forward KL (flowvi.fit_samples)
            then print diagnostics (ELBO, log Z, Pareto k-hat and verdict, importance ESS, R-hat
            across runs) and az.summary, and write to --out: posterior.nc (ArviZ InferenceData),
            report.png (loss traces, density or pair plot, importance-weight tail) and flow.flowvi
            (the fit; reload with flowvi.load)."""),
        epilog=textwrap.fill(EXIT_STATUS, 100) + "\n\n" + textwrap.fill(CACHE_NOTE, 100))
    fit.add_argument("model", metavar="MODEL_FILE", help="Python file defining the target, e.g. models/banana.py")
    _add_options(fit, DEFAULTS, out_default="runs/<name of the model file>")

    demo = commands.add_parser(
        "demo", help=f"fit the shipped {DEMO_MODEL} model and write the outputs to runs/demo",
        description=f"Fit models/{DEMO_MODEL}.py (a curved 2-D density with known log Z = log(pi)) with "
                    f"{_demo_settings()}, print diagnostics and write {', '.join(OUTPUTS)} to --out. "
                    "Every option of `flowvi fit` can override these.")
    _add_options(demo, {**DEFAULTS, **DEMO_DEFAULTS}, out_default=DEMO_DEFAULTS["out"])
    return parser


def _demo_settings(settings: dict | None = None) -> str:
    d = DEMO_DEFAULTS if settings is None else settings
    hidden = f" --hidden {','.join(map(str, d['hidden']))}" if d.get("hidden") else ""
    return (f"--flow {d['flow']}{hidden} --steps {d['steps']} --num-samples {d['num_samples']} "
            f"--runs {d['runs']} --draws {d['draws']}")


def _add_options(p: argparse.ArgumentParser, d: dict, out_default: str) -> None:
    """The options of `fit` and `demo`; every default is None so that given options can be told apart."""
    flow = p.add_argument_group("flow")
    flow.add_argument("--flow", choices=(*flows.FAMILIES, "auto"), default=None,
                      help="flow family (default: " + (d["flow"] if "flow" in d else
                           f"{flows.default_family(2)}; {flows.default_family(1)} for 1-D targets; "
                           f"{_FIT_SAMPLES['flow']} for samples") + "). "
                           "gaussian: baseline; affine_coupling/spline_coupling: fast both ways; iaf: "
                           "best for reverse KL; maf: best for samples; bnaf: most flexible")
    for name, by_family in HYPERPARAMETERS.items():
        _add_hyperparameter_flag(flow, name, by_family, d)
    flow.add_argument("--flow-option", action="append", default=[], metavar="NAME=VALUE", type=_flow_option,
                      help="any flow hyperparameter by name, e.g. --flow-option layers=6 (repeatable)")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--steps", type=_positive_int,
                     help="optimisation steps (default: until the stopping rule says the fit converged, at most "
                          "--max-steps; see post.stop_reason)" + (f" (demo: {d['steps']})" if d["steps"] else ""))
    opt.add_argument("--max-steps", type=_positive_int,
                     help=f"cap of the automatic stopping rule (default {d['max_steps']})")
    opt.add_argument("--init", choices=("auto", "standard"),
                     help="where the flow starts: auto, a Gaussian approximation of the target (warm start); "
                          f"standard, a standard normal (default {d['init']})")
    opt.add_argument("--num-samples", type=_positive_int,
                     help=f"Monte Carlo draws per step (default {d['num_samples']})")
    opt.add_argument("--learning-rate", type=_positive_float,
                     help=f"Adam learning rate, cosine-decayed over --steps, or lowered by the stopping rule (default "
                          f"{d['learning_rate']:g}; {d['samples_learning_rate']:g}, constant, for samples)")
    opt.add_argument("--runs", type=_positive_int, help=f"independent runs trained together, for R-hat across "
                     f"runs (default {d['runs']}; samples files: 1)")
    opt.add_argument("--estimator", choices=ESTIMATORS,
                     help="gradient estimator: reparam, or stl (sticking the landing; gaussian, couplings "
                          f"and maf only) (default {d['estimator']})")
    opt.add_argument("--patience", type=_positive_int,
                     help="stop a run when its loss has not improved for this many steps (epochs for samples) "
                          f"(default: never; {d['samples_patience']} epochs for samples)")
    opt.add_argument("--subsample", type=_positive_int, metavar="B",
                     help="evaluate each step's likelihood on B random observations, scaled to the full data "
                          "(doubly-stochastic VI; NumPyro models with a data plate, or files with "
                          "log_likelihood and data) (default: all observations)")
    opt.add_argument("--devices", type=_positive_int, metavar="N",
                     help="spread the fit over the first N devices (a 1-D mesh): the data, or the Monte Carlo "
                          "draws, or the runs are split over them (default: one device)")
    opt.add_argument("--epochs", type=_positive_int,
                     help=f"samples files: maximum passes over the data (default {d['epochs']})")
    opt.add_argument("--batch-size", type=_positive_int,
                     help=f"samples files: rows per step (default {d['batch_size']})")

    mcmc = p.add_argument_group("exact draws (NeuTra)")
    mcmc.add_argument("--neutra", action="store_true",
                      help="after the fit, run NUTS in the fitted flow's base space (flowvi.neutra) and write "
                           "posterior.nc from its draws, which follow the target exactly; R-hat, ESS and "
                           "divergences are printed beside the VI diagnostics (not for samples files)")
    mcmc.add_argument("--mcmc-warmup", type=_nonnegative_int,
                      help=f"--neutra: NUTS warm-up iterations per chain (default {_NEUTRA['num_warmup']})")
    mcmc.add_argument("--mcmc-samples", type=_positive_int,
                      help=f"--neutra: NUTS draws per chain (default {_NEUTRA['num_samples']})")
    mcmc.add_argument("--mcmc-chains", type=_positive_int,
                      help=f"--neutra: NUTS chains, run vectorised (default {_NEUTRA['num_chains']})")

    out = p.add_argument_group("output")
    out.add_argument("--seed", type=_nonnegative_int, help=f"random seed; the same seed gives the same fit "
                     f"(default {d['seed']})")
    out.add_argument("--draws", type=_positive_int,
                     help=f"draws per run for diagnostics and posterior.nc (default {d['draws']})")
    out.add_argument("--out", metavar="DIR", help=OUT_HELP.format(default=out_default))
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    out.add_argument("--traceback", action="store_true",
                     help="on an error, show the full Python traceback instead of one line")


def _add_hyperparameter_flag(group, name: str, by_family: dict, d: dict) -> None:
    """One flag for a flow hyperparameter, its type and help from the families' own defaults."""
    defaults = {}
    for family, value in by_family.items():
        defaults.setdefault(_show(value), []).append(family)
    if name in d:  # the demo's own setting
        shown = _show(d[name])
    elif len(defaults) == 1:
        shown = next(iter(defaults))
    else:
        shown = "; ".join(f"{value} for {', '.join(fams)}" for value, fams in defaults.items())
    example = next(iter(by_family.values()))
    kwargs: dict = {"help": f"{name.replace('_', ' ')} ({', '.join(by_family)}; default {shown})"}
    if isinstance(example, bool):
        kwargs["action"] = argparse.BooleanOptionalAction
    elif name in flows.CHOICES:
        kwargs["choices"] = flows.CHOICES[name]
    elif isinstance(example, tuple):
        kwargs.update(type=_int_tuple, metavar="N[,N...]")
    elif isinstance(example, int):
        kwargs["type"] = _positive_int
    elif isinstance(example, float):
        kwargs["type"] = _positive_float
    group.add_argument(_flag(name), default=None, **kwargs)


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


# --- argument types ----------------------------------------------------------------------------

def _bounded(convert, low, allow_low: bool, what: str):
    """An argparse type: `convert` the text, then require ``value > low`` (or ``>=``) and finite."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (value > low or (allow_low and value == low)) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_positive_int = _bounded(int, 0, False, "a positive integer")
_nonnegative_int = _bounded(int, 0, True, "an integer >= 0")
_positive_float = _bounded(float, 0.0, False, "a positive finite number")


def _int_tuple(text: str) -> tuple[int, ...]:
    parts = [p for p in text.replace(" ", ",").split(",") if p]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas (e.g. 64,64), "
                                         f"got {text!r}")
    return values


def _flow_option(text: str) -> tuple[str, object]:
    name, sep, raw = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name.isidentifier() or not raw.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. layers=6 or hidden=64,64), got {text!r}")
    raw = raw.strip()
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a plain word: transformer=spline
    if isinstance(value, list):
        value = tuple(value)
    return name, value


# --- the commands ------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    """Carry out a parsed ``fit`` or ``demo`` command."""
    try:
        if args.command == "demo":
            own_flow = args.flow not in (None, DEMO_DEFAULTS["flow"])
            for name, value in DEMO_DEFAULTS.items():
                if getattr(args, name) is None and not (own_flow and name in HYPERPARAMETER_FLAGS):
                    setattr(args, name, value)
            model = _demo_model()
            print(f"flowvi demo: fitting {model.path} with {_demo_settings(vars(args))}")
        else:
            _check_flow_flags(args, args.flow)
            model = load_model_file(args.model)
        return fit_model_file(model, args)
    except ModelFileError as err:
        if args.traceback:
            raise
        raise CliError(f"flowvi {args.command}: error: {err}") from err


def _demo_model() -> ModelFile:
    """The shipped models/banana.py (of the source tree, or of the current folder)."""
    for folder in (pathlib.Path(__file__).resolve().parents[2] / "models", pathlib.Path.cwd() / "models"):
        if (folder / f"{DEMO_MODEL}.py").exists():
            return load_model_file(folder / f"{DEMO_MODEL}.py")
    raise CliError(f"flowvi demo: error: the demo fits models/{DEMO_MODEL}.py of flowvi's source tree, which is "
                   "not here; run it from a clone of the repository, or use flowvi fit MODEL_FILE.")


def _check_flow_flags(args: argparse.Namespace, flow: str | None) -> None:
    """Reject hyperparameter flags that the chosen family does not take (once the family is known)."""
    if flow is None:
        return
    if flow == "auto":
        if _hyperparameters(args):
            raise CliError(f"flowvi {args.command}: error: --flow auto chooses the flow's hyperparameters itself; "
                           "leave out the hyperparameter flags, or name a family.")
        return
    valid = flows.hyperparameter_names(flow)
    given = _hyperparameters(args)
    wrong = [name for name in given if name not in valid]
    if wrong:
        shown = ", ".join(_flag(n) if n in HYPERPARAMETER_FLAGS else f"--flow-option {n}=..." for n in wrong)
        valid_flags = [_flag(n) for n in valid if n in HYPERPARAMETER_FLAGS]
        raise CliError(f"flowvi {args.command}: error: {shown} do{'es' if len(wrong) == 1 else ''} not apply "
                       f"to --flow {flow}; its hyperparameters are {', '.join(valid_flags)}.")


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _hyperparameters(args: argparse.Namespace) -> dict:
    out = {}
    for dest, name in HYPERPARAMETER_FLAGS.items():
        if getattr(args, dest) is not None:
            out[name] = getattr(args, dest)
    for name, value in args.flow_option:
        if name in out:
            raise CliError(f"flowvi {args.command}: error: the flow hyperparameter {name!r} is given twice "
                           f"({_flag(name)} and --flow-option {name}=...).")
        out[name] = value
    return out


def _check_kind_options(args: argparse.Namespace, model: ModelFile) -> None:
    samples = model.kind == "samples"
    wrong = [d for d in (REVERSE_KL_ONLY if samples else SAMPLES_ONLY) if getattr(args, d) is not None]
    if samples and args.runs is not None and args.runs > 1:
        wrong.append("runs")
    if wrong:
        what = ("a samples file is fitted by forward KL for --epochs" if samples else
                "they apply to samples files; this file is fitted by reverse KL for --steps")
        raise CliError(f"flowvi {args.command}: error: {', '.join(_flag(w) for w in wrong)} "
                       f"do{'es' if len(wrong) == 1 else ''} not apply to {model.path} ({what}).")


def _check_mcmc_options(args: argparse.Namespace, model: ModelFile) -> None:
    given = [_flag(d) for d in MCMC_OPTIONS if getattr(args, d) is not None]
    if given and not args.neutra:
        raise CliError(f"flowvi {args.command}: error: {', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} "
                       "only with --neutra.")
    if args.neutra and model.kind == "samples":
        raise CliError(f"flowvi {args.command}: error: --neutra needs the target's density, and {model.path} "
                       "is a samples file (fitted by forward KL, with no density to run NUTS on).")


def fit_model_file(model: ModelFile, args: argparse.Namespace) -> int:
    """Fit, diagnose, export and report one model file; return the exit status."""
    import jax

    print(f"flowvi: {model.path} defines {model.describe()}", flush=True)
    _check_kind_options(args, model)
    _check_mcmc_options(args, model)
    samples = model.kind == "samples"
    data = model.samples() if samples else None
    context = model.context(data.shape[0]) if samples else None
    target = None if samples else model.target()
    dim = data.shape[1] if samples else target.dim
    flow = args.flow or (_FIT_SAMPLES["flow"] if samples else flows.default_family(dim))
    _check_flow_flags(args, flow)
    hyper = _hyperparameters(args)
    if target is not None:
        names = target.names
        print(f"flowvi: {dim} unconstrained coordinate{'s' if dim != 1 else ''}: "
              f"{', '.join(names[:8])}{', ...' if dim > 8 else ''}")
    out = pathlib.Path(args.out or f"runs/{model.name}")
    _check_out(out, args.command)
    seed = DEFAULTS["seed"] if args.seed is None else args.seed
    draws = args.draws or DEFAULTS["draws"]
    # The diagnostics, the export and the weights panel share diag_key: the same draws, the same verdict.
    fit_key, diag_key, _, plot_key = jax.random.split(jax.random.key(seed), 4)
    sys.stdout.flush()  # what was said so far comes before the progress lines on stderr

    with warnings.catch_warnings():
        # Warnings are messages to the user here (a halted run, an interrupt): one line each, always shown.
        warnings.simplefilter("default")
        # numpy's notes on NaN arithmetic (a diverged fit's diagnostics): the NaN shows in the table itself.
        warnings.filterwarnings("ignore", NUMPY_NAN_NOTES, RuntimeWarning)
        warnings.showwarning = _show_warning
        post = _fit(model, args, target, data, flow, hyper, fit_key, context)
        return _write_outputs(model, args, post, out, data, draws, diag_key, plot_key, context)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stdout.flush()
    print(f"flowvi: warning: {message}", file=sys.stderr, flush=True)


def _check_out(out: pathlib.Path, command: str) -> None:
    """Check, before fitting, that the outputs can be written to `out`; else a CliError (one line).

    `out` must be (or be creatable as) a writable folder with no folder named like an output,
    and posterior.nc needs a netCDF engine. Outputs already there are named as to be replaced.
    """
    def fail(why: str):
        raise CliError(f"flowvi {command}: error: --out {str(out)!r} {why}")

    if out.exists() and not out.is_dir():
        fail("is a file, not a folder; give a folder (it is created if missing).")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail(f"cannot be created: {err.strerror or err}.")
    folders = [name for name in OUTPUTS if (out / name).exists() and not (out / name).is_file()]
    if folders:
        fail(f"holds {', '.join(folders)} as {'a folder' if len(folders) == 1 else 'folders'}, where flowvi "
             "writes a file; remove it or choose another --out.")
    try:
        fd, probe = tempfile.mkstemp(dir=out, prefix=".flowvi-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        fail(f"is not writable: {err.strerror or err}.")
    from flowvi.arviz import missing_netcdf_engine, netcdf_engine

    if netcdf_engine() is None:
        raise CliError(f"flowvi {command}: error: {missing_netcdf_engine()}")
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing:
        print(f"flowvi: {out} already holds {', '.join(existing)}: {'it' if len(existing) == 1 else 'they'} "
              "will be replaced by this fit's.")


def _fit(model: ModelFile, args: argparse.Namespace, target, data, flow: str, hyper: dict, fit_key, context=None):
    """Run flowvi.fit or flowvi.fit_samples with the command's options; bad options become a CliError."""
    import flowvi

    samples = model.kind == "samples"
    dim = data.shape[1] if samples else target.dim
    try:
        mesh = None if samples else _mesh(args.devices)
        if flow == "auto" and samples:
            raise ValueError("--flow auto applies to reverse-KL fits (model files with a log density or a "
                             "NumPyro model), not to samples files.")
        if flow != "auto":
            flowvi.flows.make_flow(flow, dim, **hyper)
        if samples:
            post = flowvi.fit_samples(
                data, key=fit_key, context=context, flow=flow, max_epochs=args.epochs or DEFAULTS["epochs"],
                patience=args.patience or DEFAULTS["samples_patience"],
                batch_size=args.batch_size or DEFAULTS["batch_size"],
                learning_rate=args.learning_rate or DEFAULTS["samples_learning_rate"],
                progress=not args.no_progress, **hyper)
        else:
            post = flowvi.fit(
                target, key=fit_key, flow=flow, steps=args.steps or DEFAULTS["steps"],
                max_steps=args.max_steps or DEFAULTS["max_steps"], init=args.init or DEFAULTS["init"],
                num_samples=args.num_samples or DEFAULTS["num_samples"],
                learning_rate=args.learning_rate or DEFAULTS["learning_rate"],
                num_runs=args.runs or DEFAULTS["runs"], estimator=args.estimator or DEFAULTS["estimator"],
                patience=args.patience, progress=not args.no_progress, subsample=args.subsample, mesh=mesh,
                **hyper)
    except (TypeError, ValueError) as err:
        if args.traceback:
            raise
        raise CliError(f"flowvi {args.command}: error: {err}") from err
    return post


def _write_outputs(model: ModelFile, args: argparse.Namespace, post, out: pathlib.Path, data, draws: int,
                   diag_key, plot_key, context=None) -> int:
    """Print the diagnostics and write the three outputs (each atomically); return the exit status.

    Whatever fails (the diagnostics of a diverged fit, one output) is said in one
    line on stderr and the rest is still written; then the status is 1. An
    interrupted fit gets its outputs too, and the status 130. A conditional fit
    (a samples file with `context`) is saved whole; its draws, export and report
    are ``q(x | c)`` at the mean context ``c``.
    """
    import jax
    import numpy as np

    from flowvi.arviz import write_netcdf
    from flowvi.cli.report import report_figure, summary_table
    from flowvi.io import atomic_write

    samples = model.kind == "samples"
    unit = "epochs" if samples else "steps"
    print(f"\nfit: {post.flow.name} flow ({post.flow.num_params()} parameters per run), {post.num_runs} "
          f"run{'s' if post.num_runs > 1 else ''}, {'/'.join(map(str, post.steps_run.tolist()))} {unit} "
          f"in {post.fit_seconds:.1f} s; {post.stop_reason}")
    for i, stage in enumerate(post.settings.get("stages", ())):
        hyper = ", ".join(f"{k}={v}" for k, v in stage["hyperparameters"].items()) or "defaults"
        print(f"fit: --flow auto stage {i + 1}: {stage['family']} ({hyper}), {stage['steps']} steps, "
              f"{stage['seconds']:.1f} s, ELBO {stage['elbo']:.5g}, k-hat {stage['k_hat']:.2f}"
              f"{' (passed)' if stage['passed'] else ''}")
    warm = post.settings.get("warm_start")
    if isinstance(warm, dict) and "elbo" in warm:
        print(f"fit: warm start from a Gaussian (Laplace along an L-BFGS path, {warm['iterations']} iterations, "
              f"ELBO {warm['elbo']:.5g}, {warm['seconds']:.1f} s)")
    if post.settings.get("subsample") and isinstance(post.settings.get("control_variates"), str):
        print(f"fit: control variates: {post.settings['control_variates']}")
    if int(np.sum(post.skipped_steps)):
        print(f"fit: {int(np.sum(post.skipped_steps))} step(s) skipped for non-finite loss or gradient")
    saved = post
    if context is not None:
        at = np.asarray(context, np.float64).mean(axis=0)
        print(f"fit: conditional on a {at.size}-D context; the draws, export and report are q(x | c) at the "
              f"mean context c = [{', '.join(f'{v:.4g}' for v in at)}] (the saved flow takes any context)")
        post, data = post.given(at), None  # the data are not draws of q(x | c) at one c
    interrupted = any(reason.startswith("interrupted at") for reason in post.stop_reasons)
    written, problems = [], []

    def attempt(name: str, write) -> None:
        try:
            write(out / name)
        except (OSError, ValueError, RuntimeError) as err:
            if args.traceback:
                raise
            problems.append(f"{out / name} was not written: {err}")
        else:
            written.append(name)

    attempt("flow.flowvi", saved.save)
    diag = idata = None
    try:
        if samples:
            print(_samples_summary(post))
        else:
            diag = post.diagnose(diag_key, draws, iw_k=100 if draws >= 200 else None)
            print()
            print(diag)
        reference = _reference(model)
        if reference:
            print(f"\n{reference}")
        # The same key and draws as the diagnostics just printed, and those diagnostics in its attributes.
        idata = post.to_arviz(diag_key, draws, diagnostics=diag)
        if args.neutra:
            print()
            result = neutra(post, jax.random.fold_in(diag_key, 1), progress=not args.no_progress,
                            fit_diagnostics=diag,
                            **{name: getattr(args, dest) for dest, name in MCMC_OPTIONS.items()
                               if getattr(args, dest) is not None})
            print(result)
            idata = result.to_arviz()
    except ValueError as err:
        if args.traceback:
            raise
        problems.append(f"the fit finished but its diagnostics failed, so {out / 'posterior.nc'} was not "
                        f"written: {err}")
    if idata is not None:
        print("\naz.summary of the posterior" + (" (constrained)" if model.kind == "numpyro" else "")
              + (" from the NeuTra draws" if args.neutra else "") + ":")
        print(summary_table(idata, post.target))
        attempt("posterior.nc", lambda path: write_netcdf(idata, path))
    fig = report_figure(post, idata, plot_key, diag_key, data=data, num_draws=draws)
    attempt("report.png", lambda path: atomic_write(path, lambda name: fig.savefig(name, dpi=100, format="png")))

    if written:
        print(f"\nwrote {', '.join(str(out / f) for f in OUTPUTS if f in written)}")
        reloads = []
        if "flow.flowvi" in written:
            reloads.append(f"flowvi.load({str(out / 'flow.flowvi')!r}"
                           f"{'' if samples else ', target=<the same target>'})")
        if "posterior.nc" in written:
            reloads.append(f"arviz.from_netcdf({str(out / 'posterior.nc')!r})")
        if reloads:
            print(f"reload with: {'; '.join(reloads)}")
    sys.stdout.flush()
    for problem in problems:
        print(f"flowvi {args.command}: {problem}", file=sys.stderr)
    if interrupted:
        print(f"flowvi {args.command}: interrupted ({post.stop_reason}): the outputs hold the fit so far.",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_FAILED if problems else EXIT_OK


def _mesh(devices: int | None):
    import jax

    if devices is None:
        return None
    available = jax.devices()
    if devices > len(available):
        raise ValueError(f"--devices {devices} asks for more devices than the {len(available)} JAX sees "
                         f"({available[0].platform}).")
    return jax.make_mesh((devices,), ("batch",), devices=available[:devices])


def _reference(model: ModelFile) -> str:
    """The known answers a model file may give in ``reference`` (e.g. ``log_z``, ``mean``, ``sd``)."""
    import numpy as np

    ref = getattr(model.module, "reference", None)
    if not isinstance(ref, dict) or not ref:
        return ""
    parts = []
    for name, value in ref.items():
        try:
            values = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            continue
        shown = ", ".join(f"{v:.4g}" for v in values.ravel()[:8]) + (", ..." if values.size > 8 else "")
        parts.append(f"{name} = {shown if values.ndim == 0 else f'[{shown}]'}")
    return f"  exact answers given in {model.path.name}: {'; '.join(parts)}" if parts else ""


def _samples_summary(post) -> str:
    import numpy as np

    val = np.asarray(post.validation_losses, dtype=np.float64)
    head = "\nforward KL (no target density, so no ELBO, log Z, k-hat or R-hat):\n"
    final = float(post.losses[-1]) if len(post.losses) else float("nan")
    if not np.isfinite(val).any():
        return (f"{head}  final training NLL   {final:.4f}\n"
                "  best held-out NLL    none finite (the parameters are those the fit started from)")
    best = int(np.nanargmin(val))
    return (f"{head}  final training NLL   {final:.4f}\n"
            f"  best held-out NLL    {float(val[best]):.4f} (epoch {best + 1}; these parameters are kept)")


if __name__ == "__main__":
    sys.exit(main())
