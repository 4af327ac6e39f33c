"""Apply many layers of one bijector type with stacked parameters, via `lax.scan`.

Unrolling a Python loop over layers makes compile time grow with depth;
scanning keeps it roughly constant. The scan body holds up to `UNROLL` layers:
a loop iteration costs a few microseconds on CPU (measured 20% of an IAF step
at four layers), so shallow stacks run unrolled, and a deep stack compiles
like an `UNROLL`-layer one.
"""

from collections.abc import Callable
from typing import Any

import distrax
import jax
import jax.numpy as jnp

UNROLL = 4


class LayerScan(distrax.Bijector):
    """Composition of layers ``make_layer(params[k], consts[k])`` for k = 0..K-1.

    Layer 0 is applied first in the forward direction.

    Args:
        make_layer: ``(layer_params, layer_consts) -> distrax.Bijector`` acting on
            events of shape ``(dim,)``.
        params: pytree whose leaves have a leading layer axis of length K.
        consts: pytree of non-trainable per-layer arrays (masks), leading axis K,
            or None.
    """

    def __init__(self, make_layer: Callable[[Any, Any], distrax.Bijector], params: Any,
                 consts: Any = None):
        super().__init__(event_ndims_in=1)
        self._make_layer = make_layer
        self._params = params
        self._consts = consts

    def _run(self, z: jax.Array, inverse: bool) -> tuple[jax.Array, jax.Array]:
        def body(carry, layer):
            z, log_det = carry
            bij = self._make_layer(*layer)
            z, ld = bij.inverse_and_log_det(z) if inverse else bij.forward_and_log_det(z)
            return (z, log_det + ld), None

        init = (z, jnp.zeros(z.shape[:-1], z.dtype))
        layers = jax.tree.leaves(self._params)[0].shape[0]
        (z, log_det), _ = jax.lax.scan(body, init, (self._params, self._consts), reverse=inverse,
                                       unroll=min(layers, UNROLL))
        return z, log_det

    def forward_and_log_det(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x: (..., dim) -> (y: (..., dim), log_det: (...))."""
        return self._run(x, inverse=False)

    def inverse_and_log_det(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """y: (..., dim) -> (x: (..., dim), log_det: (...))."""
        return self._run(y, inverse=True)
