"""One process of the two-process fit in tests/test_multihost.py (not a test module itself).

Usage: python multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_JSON

Each process has 2 simulated CPU devices; after jax.distributed.initialize the
global mesh spans 2 x NUM_PROCESSES devices, and the same `flowvi.fit` calls
run in every process. The fitted parameters are written to OUT_JSON.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the shipped models/
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

process_id, num_processes, port, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=num_processes,
                           process_id=process_id, initialization_timeout=60)

from multihost_fits import run_fits  # noqa: E402

assert jax.process_count() == num_processes and jax.local_device_count() == 2
fits = run_fits(jax.make_mesh((jax.device_count(),), ("batch",)))
out = {"process_index": jax.process_index(), "device_count": jax.device_count()}
for name, post in fits.items():
    out[name] = {"params": [np.asarray(leaf).tolist() for leaf in jax.tree.leaves(post.params)],
                 "losses": np.asarray(post.losses).tolist()}
with open(out_path, "w") as f:
    json.dump(out, f)
jax.distributed.shutdown()
