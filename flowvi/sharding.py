"""How `flowvi.fit(mesh=...)` spreads a fit over devices, and over processes.

Everything here is JAX's own machinery: a `jax.sharding.Mesh`, `NamedSharding`
annotations on the jitted training chunk's inputs and on the Monte Carlo base
draws, and the compiler (GSPMD) inserting the collectives. Parameters are
replicated; the gradient all-reduce is the compiler's.

One 1-D mesh is split one of three ways (the ``mode`` of a `Layout`):

- ``"batch"``: one run; the Monte Carlo batch is split over the devices
  (``num_samples`` must be a multiple of the mesh size).
- ``"runs"``: several runs; each device trains ``num_runs / mesh.size`` of
  them (``num_runs`` must be a multiple of the mesh size).
- ``"data"``: a target with a data axis; the data arrays are split along that
  axis and every device evaluates the likelihood of its own rows for all runs
  and draws (the likelihood dominates the cost of such targets).

Across processes (after ``jax.distributed.initialize``) the mesh spans every
process's devices; host values enter it with `put` and leave it with `to_host`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MODES = ("batch", "runs", "data")


class Layout(NamedTuple):
    """A fit's placement on a mesh (hashable: part of the jit cache key).

    Attributes:
        mesh: a 1-D `jax.sharding.Mesh`.
        axis: its axis name.
        mode: ``"batch"``, ``"runs"`` or ``"data"`` (see the module docstring).
    """

    mesh: Mesh
    axis: str
    mode: str

    @property
    def size(self) -> int:
        """Number of devices in the mesh."""
        return int(self.mesh.size)

    def replicated(self) -> NamedSharding:
        """Every device holds the whole array."""
        return NamedSharding(self.mesh, P())

    def split(self) -> NamedSharding:
        """The leading axis is split over the mesh's devices."""
        return NamedSharding(self.mesh, P(self.axis))

    def state_sharding(self) -> NamedSharding:
        """Sharding of every training-state leaf (leading run axis)."""
        return self.split() if self.mode == "runs" else self.replicated()

    def draws_sharding(self) -> NamedSharding | None:
        """Sharding constraint on one run's base draws ``u: (num_samples, dim)``; None: leave to the compiler."""
        if self.mode == "batch":
            return NamedSharding(self.mesh, P(self.axis, None))
        if self.mode == "data":
            return self.replicated()
        return None


def check_mesh(mesh: Any) -> Mesh | None:
    """Return `mesh` if it is None or a 1-D `jax.sharding.Mesh`; otherwise raise naming ``mesh``."""
    if mesh is None:
        return None
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, e.g. jax.make_mesh((jax.device_count(),), "
                        f"('batch',)), got {type(mesh).__name__}.")
    if len(mesh.axis_names) != 1:
        raise ValueError(f"mesh must have exactly one axis (flowvi splits one thing over it); got axes "
                         f"{dict(mesh.shape)}. Use jax.make_mesh((n,), ('batch',)).")
    return mesh


def make_layout(mesh: Any, num_runs: int, num_samples: int, has_data: bool) -> Layout | None:
    """Choose how a fit uses `mesh`, or raise a ValueError naming the argument that does not fit.

    Args:
        mesh: None or a `jax.sharding.Mesh` with one axis (any name), e.g.
            ``jax.make_mesh((jax.device_count(),), ("batch",))``.
        num_runs: independent runs.
        num_samples: Monte Carlo batch per run and step.
        has_data: the target has a data axis (it is then split along that axis).

    Returns:
        None without a mesh, else the `Layout`.
    """
    mesh = check_mesh(mesh)
    if mesh is None:
        return None
    axis = mesh.axis_names[0]
    n = int(mesh.size)
    # jax.make_mesh gives Explicit axes (sharding in types); flowvi annotates a few
    # arrays and lets the compiler propagate the rest, which needs an Auto axis.
    mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,))
    if has_data:
        return Layout(mesh, axis, "data")
    if num_runs > 1:
        if num_runs % n:
            raise ValueError(f"num_runs={num_runs} does not divide over the mesh's {n} devices: with "
                             f"num_runs > 1 each device trains num_runs / {n} runs. Use a multiple of {n}, "
                             "or num_runs=1 to split the Monte Carlo batch instead.")
        return Layout(mesh, axis, "runs")
    if num_samples % n:
        raise ValueError(f"num_samples={num_samples} does not divide over the mesh's {n} devices: the "
                         f"Monte Carlo batch is split evenly. Use a multiple of {n}.")
    return Layout(mesh, axis, "batch")


def put(tree: Any, sharding: Any) -> Any:
    """Place host or single-device values on a (possibly multi-process) sharding.

    Every process must pass the same values; each keeps only the shards of its
    own devices. PRNG key arrays are placed through their raw key data.

    Args:
        tree: pytree of arrays (numpy, jax, or typed PRNG keys).
        sharding: one `jax.sharding.Sharding` for every leaf, or a pytree of
            them matching `tree`.
    """
    if isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda leaf: _put_leaf(leaf, sharding), tree)
    return jax.tree.map(_put_leaf, tree, sharding)


def _put_leaf(leaf: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(leaf)
        return jax.random.wrap_key_data(_put_leaf(jax.random.key_data(leaf), sharding), impl=impl)
    if jax.process_count() == 1:
        return jax.device_put(leaf, sharding)
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def to_host(tree: Any) -> Any:
    """Numpy copies of a pytree of arrays, gathered from every process when they span several."""
    def one(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(leaf)
    return jax.tree.map(one, tree)
