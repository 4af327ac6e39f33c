"""One process of the two-process fit in tests/test_multihost.py (not a test module itself).

Usage: python multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_JSON

Each process has 2 simulated CPU devices; after jax.distributed.initialize the
global mesh spans 2 x NUM_PROCESSES devices, and the same `flowvi.fit` calls
run in every process. The fitted parameters are written to OUT_JSON.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

process_id, num_processes, port, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=num_processes,
                           process_id=process_id, initialization_timeout=60)

import flowvi  # noqa: E402

assert jax.process_count() == num_processes and jax.local_device_count() == 2
mesh = jax.make_mesh((jax.device_count(),), ("batch",))


def banana(x):
    return -0.5 * (x[0] ** 2 + (x[1] - x[0] ** 2) ** 2 / 0.25)


rows = np.random.default_rng(0).normal(1.0, 1.0, size=(64, 2)).astype(np.float32)
data_target = flowvi.Target(log_prior=lambda x: -0.5 * jnp.sum(x ** 2),
                            log_likelihood=lambda x, r: -0.5 * jnp.sum((r - x) ** 2), data=rows, dim=2)
fits = {
    "batch": flowvi.fit(banana, dim=2, flow="gaussian", steps=10, num_samples=16, mesh=mesh,
                        key=jax.random.key(0)),
    "runs": flowvi.fit(banana, dim=2, flow="gaussian", steps=10, num_samples=8, num_runs=4, mesh=mesh,
                       key=jax.random.key(0)),
    "data": flowvi.fit(data_target, flow="gaussian", steps=10, num_samples=8, mesh=mesh, subsample=16,
                       key=jax.random.key(0)),
}
out = {"process_index": jax.process_index(), "device_count": jax.device_count()}
for name, post in fits.items():
    out[name] = {"params": [np.asarray(leaf).tolist() for leaf in jax.tree.leaves(post.params)],
                 "losses": np.asarray(post.losses).tolist()}
with open(out_path, "w") as f:
    json.dump(out, f)
jax.distributed.shutdown()
