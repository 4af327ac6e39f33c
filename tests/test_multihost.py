"""Two processes on localhost, joined by jax.distributed, run the same fits on one global mesh.

Each process (tests/multihost_worker.py) has 2 simulated CPU devices and talks
to the other through JAX's gloo CPU collectives; the mesh spans all 4 devices.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from multihost_fits import run_fits

WORKER = Path(__file__).resolve().with_name("multihost_worker.py")
TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not hasattr(jax.config, "jax_cpu_collectives_implementation"),
                    reason="this jaxlib has no CPU collectives (jax_cpu_collectives_implementation)")
def test_two_process_fit_agrees_across_processes_and_with_one_device(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    outs = [tmp_path / f"process{i}.json" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), "2", str(port), str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i, out in enumerate(outs)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"process {i} failed:\n{(logs[i] if i < len(logs) else '')[-4000:]}"
    results = [json.loads(out.read_text()) for out in outs]
    assert [r["process_index"] for r in results] == [0, 1]
    assert all(r["device_count"] == 4 for r in results)
    for name in ("batch", "runs", "data"):
        assert results[0][name] == results[1][name], f"{name}: the processes disagree"

    # The same fits on this process's single device.
    single = run_fits()
    for name, post in single.items():
        for got, want in zip(results[0][name]["params"], jax.tree.leaves(post.params), strict=True):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5, err_msg=name)
