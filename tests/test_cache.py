"""flowvi.cache: JAX's persistent compilation cache, so that a second process does not compile again."""

import importlib
import json
import pathlib
import subprocess
import sys

import jax
import pytest

import flowvi
from flowvi import cache

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A small fit in a fresh process; it prints the compilation-cache events JAX reported.
SECOND_PROCESS = """
import json, jax, jax.monitoring
counts = {}
jax.monitoring.register_event_listener(lambda name, **kw: counts.__setitem__(name, counts.get(name, 0) + 1))
import flowvi
post = flowvi.fit(lambda x: -0.5 * (x ** 2).sum(), dim=2, flow="gaussian", steps=20, key=jax.random.key(0),
                  progress=False)
post.sample(jax.random.key(1), 10)
print(json.dumps({"folder": str(flowvi.cache.folder()), **counts}))
"""


@pytest.fixture
def restore_cache():
    """Leave JAX's cache settings as they were (tests in this process must not write to a cache)."""
    saved = {name: getattr(jax.config, name) for name in
             ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
              "jax_persistent_cache_min_entry_size_bytes")}
    yield
    cache.disable()
    for name, value in saved.items():
        jax.config.update(name, value)


def _run(env_folder, tmp_path):
    env = {"PATH": "", "HOME": str(tmp_path), "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
           "FLOWVI_CACHE": "1", "FLOWVI_CACHE_DIR": str(env_folder)}
    out = subprocess.run([sys.executable, "-c", SECOND_PROCESS], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_reads_every_program_from_the_cache(tmp_path):
    folder = tmp_path / "jax-cache"
    first = _run(folder, tmp_path)
    assert first["folder"] == str(folder.resolve())
    written = sorted(folder.iterdir())
    requests = first["/jax/compilation_cache/compile_requests_use_cache"]
    # Every program was written, the small ones too (JAX's default skips those under 1 s of compilation).
    assert first.get("/jax/compilation_cache/cache_hits", 0) == 0 and requests >= 5
    assert len([p for p in written if p.name.startswith("jit_")]) == requests
    second = _run(folder, tmp_path)
    assert second["/jax/compilation_cache/compile_requests_use_cache"] == requests
    assert second["/jax/compilation_cache/cache_hits"] == requests
    assert second.get("/jax/compilation_cache/cache_misses", 0) == 0


def test_enable_sets_the_folder_and_caches_small_programs(tmp_path, monkeypatch, restore_cache):
    monkeypatch.delenv(cache.ENV_SWITCH, raising=False)
    assert cache.enable(tmp_path / "a") == (tmp_path / "a").resolve()
    assert jax.config.jax_compilation_cache_dir == str((tmp_path / "a").resolve())
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    assert jax.config.jax_persistent_cache_min_entry_size_bytes == -1
    assert flowvi.cache.folder() == (tmp_path / "a").resolve()
    # Moved: the new folder is used from the next compilation on.
    assert cache.enable(tmp_path / "b") == (tmp_path / "b").resolve() == cache.folder()
    jax.jit(lambda x: x * 3.0 + 1.0)(jax.numpy.ones(7))
    assert any(p.name.startswith("jit_") for p in (tmp_path / "b").iterdir())
    cache.disable()
    assert cache.folder() is None


def test_the_environment_chooses_the_folder_or_turns_the_cache_off(tmp_path, monkeypatch, restore_cache):
    monkeypatch.delenv(cache.ENV_SWITCH, raising=False)
    monkeypatch.setenv(cache.ENV_FOLDER, str(tmp_path / "env"))
    assert cache.default_folder() == tmp_path / "env"
    assert cache.enable() == (tmp_path / "env").resolve()
    cache.disable()
    monkeypatch.delenv(cache.ENV_FOLDER)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_folder() == tmp_path / "xdg" / "flowvi" / "jax"
    monkeypatch.setenv(cache.ENV_SWITCH, "0")
    assert cache.disabled_by_environment()
    assert cache.enable(tmp_path / "off") is None
    assert cache.folder() is None and not (tmp_path / "off").exists()


def test_bad_folders_are_refused_with_the_reason(tmp_path, monkeypatch, restore_cache):
    monkeypatch.delenv(cache.ENV_SWITCH, raising=False)
    before = cache.folder()  # the test session's own cache folder (tests/conftest.py), or None
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"cache folder .*file/jax.* cannot be created.*FLOWVI_CACHE=0"):
        cache.enable(tmp_path / "file" / "jax")
    with pytest.raises(TypeError, match="path must be a folder"):
        cache.enable(3)
    with pytest.warns(RuntimeWarning, match="runs without the compilation cache"):
        assert cache.enable_or_warn(tmp_path / "file" / "jax") is None
    assert cache.folder() == before  # a refused folder changes nothing


def test_the_command_line_turns_the_cache_on(monkeypatch):
    cli = importlib.import_module("flowvi.cli.main")  # the module (flowvi.cli.main is also the function's name)
    calls = []
    monkeypatch.setattr(cache, "enable_or_warn", lambda path=None: calls.append(path))
    monkeypatch.setattr(cli, "run", lambda args: 0)
    assert cli.main(["fit", "models/banana.py"]) == 0
    assert calls == [None]
