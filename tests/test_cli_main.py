"""The `flowvi` command: every model file fits end to end; bad input exits non-zero with one line."""

import os
import pathlib
import subprocess
import sys

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowvi
from flowvi.cli import main
from flowvi.cli.main import OUTPUTS
from flowvi.cli.model_file import ModelFileError, load_model_file
from flowvi.cli.report import MAX_SUMMARY_ROWS, summary_table

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODEL_FILES = sorted(p for p in (ROOT / "models").glob("*.py") if p.name != "__init__.py")
# Tiny fits: the point is that every file goes through fit, diagnostics, export and report.
TINY = ["--steps", "20", "--runs", "2", "--draws", "200", "--no-progress"]
TINY_FLOW = {"numpyro": ["--flow", "gaussian"],
             "data": ["--flow", "gaussian", "--subsample", "16"],
             "samples": ["--flow", "maf", "--layers", "1", "--hidden", "4", "--epochs", "2",
                         "--batch-size", "4096", "--draws", "200", "--no-progress"]}
FOUND = {"log_density": "defines a log density", "numpyro": "defines a NumPyro model", "samples": "defines samples",
         "data": "defines a log likelihood with data"}
DATA_MODEL = '''"""Logistic regression with a data axis: the fourth kind of model file."""
import numpy as np
import jax.numpy as jnp

rng = np.random.default_rng(0)
X = rng.normal(size=(100, 2)).astype(np.float32)
y = (rng.uniform(size=100) < 0.5).astype(np.float32)
dim, names, data = 2, ["w0", "w1"], (X, y)


def log_prior(w):
    return -0.5 * jnp.sum(w ** 2)


def log_likelihood(w, row):
    x, t = row
    return t * (x @ w) - jnp.logaddexp(0.0, x @ w)
'''


def _kind(path: pathlib.Path) -> str:
    text = path.read_text()
    if "\ndef log_likelihood(" in text:
        return "data"
    if "\nsamples = " in text:
        return "samples"
    return "numpyro" if "\ndef model(" in text else "log_density"


def _one_line_error(capsys, argv, *expected):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


# The whole pipeline (fit, diagnostics, export, report) runs once per kind of model file: the
# banana (a log density) through `flowvi demo` with every other kind of flow option, below; the
# NumPyro model with constrained, matrix-valued and deterministic sites, the samples file, and a
# file with a data axis (plus --subsample) here. That every other model file is a valid one of
# its kind is checked without fitting, below; `fit` of a log-density file in the seed and
# --devices tests.
PIPELINE = {"numpyro": ROOT / "models" / "constrained.py", "samples": ROOT / "models" / "chequerboard.py",
            "data": "data"}


def _check_pipeline_outputs(kind, out, folder):
    """What every kind's run prints and writes; returns the saved fit."""
    assert FOUND[kind] in out
    for name in OUTPUTS:
        assert (folder / name).stat().st_size > 0
    assert "mean" in out and "sd" in out  # az.summary
    if kind != "samples":
        for text in ("ELBO", "log Z", "Pareto k-hat", "verdict:", "importance ESS", "R-hat across runs", "r_hat"):
            assert text in out
    post = flowvi.load(folder / "flow.flowvi")
    assert az.from_netcdf(folder / "posterior.nc").posterior.sizes["chain"] == (1 if kind == "samples" else 2)
    assert post.num_runs == (1 if kind == "samples" else 2)
    return post


@pytest.mark.parametrize("kind", list(PIPELINE))
def test_fit_one_model_file_of_each_kind(kind, tmp_path, capsys):
    path = PIPELINE[kind]
    if path == "data":
        path = tmp_path / "data_model.py"
        path.write_text(DATA_MODEL)
    assert _kind(path) == kind
    argv = ["fit", str(path), "--out", str(tmp_path)] + TINY_FLOW[kind] + ([] if kind == "samples" else TINY)
    assert main(argv) == 0
    out = capsys.readouterr().out
    post = _check_pipeline_outputs(kind, out, tmp_path)
    if kind == "numpyro":  # latent sites listed before the deterministic ones
        assert out.index("\nsigma ") < out.index("\ncorr[0, 0]") and out.index("\nL[0, 0]") < out.index("\ncov[0, 0]")
    if kind == "samples":
        assert post.flow.name == "maf" and post.flow.options["layers"] == 1 and post.flow.options["hidden"] == (4,)
    else:
        assert post.flow.name == "gaussian"
    if kind == "data":
        assert post.settings["subsample"] == 16
        assert "fit: control variates: second-order Taylor expansion" in out


@pytest.mark.parametrize("path", MODEL_FILES, ids=[p.stem for p in MODEL_FILES])
def test_every_model_file_is_a_valid_model_file(path):
    model = load_model_file(path)
    assert model.kind == _kind(path)
    assert FOUND[model.kind].removeprefix("defines ") in model.describe()
    if model.kind == "log_density":  # cheap; NumPyro targets are built in test_models_files / test_numpyro_*
        target = model.target()
        assert target.dim == model.module.dim
        assert np.isfinite(float(target.log_density(jnp.zeros(target.dim))))
    if model.kind == "samples":
        assert model.samples().ndim == 2


def test_summary_table_shows_at_most_its_rows_and_says_how_many_are_left():
    idata = az.from_dict(posterior={"x": np.random.default_rng(0).normal(size=(2, 50, MAX_SUMMARY_ROWS + 7))})
    lines = summary_table(idata).splitlines()
    assert len(lines) == 1 + MAX_SUMMARY_ROWS + 1  # header, rows, the note
    assert lines[-1].startswith("... (7 more rows; all of them: az.summary(")


# The demo's own flow (spline_coupling) and runs (2) with tiny settings; every other kind of flow
# option: a generic --flow-option (a number, a tuple), a family flag (--bins), the fit's options.
DEMO_OPTIONS = ["--steps", "30", "--draws", "200", "--flow-option", "layers=1", "--flow-option", "hidden=4,4",
                "--bins", "3", "--learning-rate", "1e-2", "--num-samples", "8", "--estimator", "reparam",
                "--patience", "500", "--seed", "3"]


def test_demo_fits_the_banana_writes_outputs_and_reloads(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), *DEMO_OPTIONS]) == 0
    captured = capsys.readouterr()
    assert "flowvi demo: fitting" in captured.out and "banana.py" in captured.out
    assert "step" in captured.err  # the progress bar
    post = _check_pipeline_outputs("log_density", captured.out, tmp_path)
    assert post.flow.name == "spline_coupling"
    given = {"layers": 1, "hidden": (4, 4), "bins": 3}
    assert {name: post.flow.options[name] for name in given} == given
    assert post.settings["steps"] == 30 and post.settings["learning_rate"] == 1e-2
    assert post.settings["num_samples"] == 8 and post.settings["patience"] == 500
    # Reloaded with its target (no warning: the fingerprint matches), each run's density at the exported
    # draws is the one exported with them (float32 rounding through the inverse: atol 1e-4).
    banana = load_model_file(ROOT / "models" / "banana.py")
    post = flowvi.load(tmp_path / "flow.flowvi", banana.target())
    idata = az.from_netcdf(tmp_path / "posterior.nc")
    x, log_q = idata.posterior["x"].values, idata.sample_stats["log_q"].values  # (2, 200, 2), (2, 200)
    for r in range(2):
        np.testing.assert_allclose(post.run(r).log_prob(x[r]), log_q[r], rtol=1e-4, atol=1e-4)


class _FitCalled(Exception):
    pass


def test_every_kind_of_option_reaches_the_fit(monkeypatch, tmp_path):
    # What the command passes to flowvi.fit (stopped there): the family, a family flag, --flow-option
    # values (a number, a tuple) and the fit's own options. The demo test fits with such options end to end.
    seen = {}

    def fit(target, **kwargs):
        seen.update(kwargs, dim=target.dim)
        raise _FitCalled

    monkeypatch.setattr(flowvi, "fit", fit)
    with pytest.raises(_FitCalled):
        main(["fit", BANANA, "--flow", "iaf", "--transformer", "spline", "--flow-option", "layers=1", "--flow-option",
              "hidden=4,4", "--bins", "3", "--learning-rate", "1e-2", "--num-samples", "8", "--estimator", "reparam",
              "--patience", "500", "--steps", "7", "--runs", "3", "--no-progress", "--init", "standard",
              "--max-steps", "99", "--out", str(tmp_path)])
    assert seen.pop("key") is not None and seen.pop("mesh") is None and seen.pop("subsample") is None
    assert seen == {"dim": 2, "flow": "iaf", "transformer": "spline", "layers": 1, "hidden": (4, 4), "bins": 3,
                    "learning_rate": 1e-2, "num_samples": 8, "estimator": "reparam", "patience": 500, "steps": 7,
                    "num_runs": 3, "progress": False, "init": "standard", "max_steps": 99}


def test_help_documents_every_option(capsys):
    assert main(["fit", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--flow", "--layers", "--hidden", "--bins", "--bound", "--transformer", "--block-size",
                 "--covariance", "--flow-option", "--steps", "--max-steps", "--init", "--num-samples",
                 "--learning-rate", "--runs",
                 "--estimator", "--patience", "--epochs", "--batch-size", "--seed", "--draws", "--out"):
        assert f"\n  {flag} " in text, flag
    assert "exit status" in text
    assert main(["demo", "--help"]) == 0
    assert "banana" in capsys.readouterr().out


def test_missing_model_file(capsys, tmp_path):
    _one_line_error(capsys, ["fit", str(tmp_path / "nope.py")], "does not exist")
    _one_line_error(capsys, ["fit", str(tmp_path)], "is a directory")
    (tmp_path / "data.csv").write_text("1,2\n")
    _one_line_error(capsys, ["fit", str(tmp_path / "data.csv")], "must be a Python file")


@pytest.mark.parametrize("source, expected", [
    ("import numpy as np\n\nx = undefined_name + 1\n", ["failed to import", "NameError", "undefined_name",
                                                        "(line 3)"]),
    ("def log_density(x:\n    return x\n", ["failed to import", "SyntaxError", "(line 1)"]),
    ("import no_such_module_xyz\n", ["failed to import", "ModuleNotFoundError", "no_such_module_xyz"]),
    ("raise SystemExit(3)\n", ["failed to import", "SystemExit"]),
])
def test_model_file_that_fails_to_import(source, expected, capsys, tmp_path):
    path = tmp_path / "broken.py"
    path.write_text(source)
    _one_line_error(capsys, ["fit", str(path)], *expected)


@pytest.mark.parametrize("source, expected", [
    ("x = 1\n", ["defines no target", "`log_density` and `dim`", "`model`", "`samples`", "it defines x"]),
    ("data = [1]\ndef log_likelihood(w, row):\n    return 0.0\n", ["`log_likelihood` but no `dim`"]),
    ("dim = 1\ndata = [1]\ndef log_likelihood(w, row):\n    return 0.0\n", ["no `log_prior`"]),
    ("def log_density(x):\n    return -x @ x\n", ["`log_density` but no `dim`"]),
    ("dim = 2\n", ["`dim` but no `log_density`"]),
    ("args = (1,)\n", ["no `model`"]),
    ("import numpy as np\ndim = 1\ndef log_density(x):\n    return -x[0] ** 2\nsamples = np.zeros((5, 1))\n",
     ["more than one kind", "log density", "samples"]),
    ("dim = 0\ndef log_density(x):\n    return 0.0\n", ["`dim` must be a positive integer"]),
    ("dim = 2\nnames = ['a']\ndef log_density(x):\n    return 0.0\n", ["`names` has 1 entries"]),
    ("model = 3\n", ["`model` must be a NumPyro model"]),
    ("def model():\n    pass\nkwargs = [1]\n", ["`kwargs` must be a dict"]),
    ("def model():\n    pass\n", ["no latent sample sites"]),
    ("import numpy as np\nsamples = np.full((4, 2), np.nan)\n", ["`samples` data holds 8 NaN"]),
    ("dim = 2\ndef log_density(x):\n    return x\n", ["must return a scalar"]),
])
def test_model_file_without_a_usable_target(source, expected, capsys, tmp_path):
    path = tmp_path / "model.py"
    path.write_text(source)
    _one_line_error(capsys, ["fit", str(path), "--no-progress", "--out", str(tmp_path)],
                    *expected)


BANANA = str(ROOT / "models" / "banana.py")
CHEQUERBOARD = str(ROOT / "models" / "chequerboard.py")


@pytest.mark.parametrize("argv, expected", [
    (["fit", BANANA, "--steps", "0"], ["--steps", "positive integer", "'0'"]),
    (["fit", BANANA, "--learning-rate", "-1"], ["--learning-rate", "positive"]),
    (["fit", BANANA, "--flow", "nope"], ["--flow", "invalid choice", "'nope'"]),
    (["fit", BANANA, "--hidden", "a,b"], ["--hidden", "positive integers separated by commas"]),
    (["fit", BANANA, "--bogus"], ["unrecognized arguments: --bogus"]),
    (["fit"], ["MODEL_FILE"]),
    (["fit", BANANA, "--flow", "gaussian", "--layers", "3"], ["--layers does not apply to --flow gaussian",
                                                              "--covariance"]),
    (["fit", BANANA, "--flow-option", "layers"], ["NAME=VALUE"]),
    (["fit", BANANA, "--flow", "iaf", "--flow-option", "depth=3"],
     ["--flow-option depth=... does not apply to --flow iaf", "--layers"]),
    (["fit", BANANA, "--layers", "2", "--flow-option", "layers=3"], ["'layers' is given twice"]),
    (["fit", BANANA, "--epochs", "3"], ["--epochs does not apply", "banana.py", "--steps"]),
    (["fit", CHEQUERBOARD, "--steps", "3", "--runs", "2"], ["--steps, --runs do not apply", "--epochs"]),
    (["fit", BANANA, "--flow", "iaf", "--estimator", "stl"], ["estimator='stl'", "iaf"]),
    (["fit", BANANA, "--flow", "iaf", "--transformer", "cubic"], ["--transformer", "invalid choice"]),
    (["fit", BANANA, "--flow", "iaf", "--flow-option", "transformer=cubic"], ["transformer"]),
    (["fit", BANANA, "--subsample", "10"], ["subsample"]),
    (["fit", BANANA, "--devices", "4096"], ["--devices 4096", "more devices"]),
    (["fit", CHEQUERBOARD, "--subsample", "10"], ["--subsample does not apply"]),
])
def test_invalid_options(argv, expected, capsys, tmp_path):
    _one_line_error(capsys, [*argv, "--no-progress", "--out", str(tmp_path)] if len(argv) > 1 else argv, *expected)


def test_console_script_exit_status_and_message(tmp_path):
    script = pathlib.Path(sys.executable).parent / "flowvi"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "flowvi"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([*command, "fit", str(tmp_path / "missing.py")], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == f"flowvi fit: error: model file {str(tmp_path / 'missing.py')!r} does not exist."
    assert result.stdout == ""


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"flowvi {flowvi.__version__}"


def test_traceback_flag_raises_instead_of_one_line(capsys, tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import numpy as np\n\nx = undefined_name + 1\n")
    with pytest.raises(ModelFileError, match="failed to import: NameError") as info:
        main(["fit", str(path), "--traceback"])
    assert isinstance(info.value.__cause__, NameError)  # the user's error, with its traceback
    # A bad option value found by the fit itself: the library's own exception.
    with pytest.raises(ValueError, match="estimator='stl'"):
        main(["fit", BANANA, "--flow", "iaf", "--estimator", "stl", "--no-progress", "--out", str(tmp_path),
              "--traceback"])
    assert capsys.readouterr().err == ""  # nothing was reduced to one line


GAUSSIAN_FIT = ["--flow", "gaussian", "--steps", "20", "--runs", "1", "--num-samples", "8", "--draws", "200",
                "--no-progress"]


def _fitted_params(folder):
    return jax.tree.leaves(flowvi.load(folder / "flow.flowvi").params)


def test_same_seed_same_fit_and_export(tmp_path, capsys):
    runs = {}
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        assert main(["fit", BANANA, *GAUSSIAN_FIT, "--seed", seed, "--out", str(tmp_path / name)]) == 0
        runs[name] = az.from_netcdf(tmp_path / name / "posterior.nc").posterior["x"].values
    capsys.readouterr()
    for x, y in zip(_fitted_params(tmp_path / "a"), _fitted_params(tmp_path / "b"), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(runs["a"], runs["b"])
    assert not np.allclose(runs["a"], runs["c"])
    assert not all(np.allclose(x, y) for x, y in zip(_fitted_params(tmp_path / "a"), _fitted_params(tmp_path / "c"),
                                                     strict=True))


# A successful `--devices N` (N > 1) needs a host with several devices: it runs among the 4-device
# checks of tests/test_sharding.py (check_cli_devices_spreads_the_fit_and_matches_one_device).
