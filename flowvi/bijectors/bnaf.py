"""Block neural autoregressive bijector (De Cao, Aziz and Titov, 2020).

A monotone, autoregressive neural network ``y = f(x)`` whose weight matrices
are block lower-triangular: blocks on the diagonal are strictly positive
(``exp`` of a free parameter), blocks below it are free, blocks above it are
zero. Coordinate ``i`` of the output therefore depends on ``x_{<=i}`` and is
strictly increasing in ``x_i``. The diagonal of the Jacobian is tracked in
log space through the layers (a log-matmul-exp of the diagonal blocks).

Activation: ``h + a * tanh(h)`` with ``a = exp(g) - 1 > -1`` learnable per
unit. It is strictly increasing for every ``a > -1`` and is the identity at
``g = 0``, which lets the untrained network be exactly the identity map (the
original paper uses a plain ``tanh``, which cannot be).

The inverse has no closed form: it is computed numerically, coordinate by
coordinate, by bracketing and bisection (``dim * (expand + bisect)`` forward
passes). Use BNAF where only sampling and the density of its own samples are
needed (reverse KL), or for forward KL where only the density of data is
needed; ``log_prob`` of arbitrary points in reverse-KL orientation is slow.
"""

import distrax
import jax
import jax.numpy as jnp
import numpy as np

_EXPAND_STEPS = 40
_BISECT_STEPS = 60


def block_masks(dim: int, a_out: int, a_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal-block and strictly-lower-block 0/1 masks of shape (dim*a_out, dim*a_in)."""
    rows = np.repeat(np.arange(dim), a_out)[:, None]
    cols = np.repeat(np.arange(dim), a_in)[None, :]
    return (rows == cols).astype(np.float32), (rows > cols).astype(np.float32)


class BlockAutoregressive(distrax.Bijector):
    """One block neural autoregressive network as a bijector on ``(..., dim)``.

    Args:
        params: list over network layers of ``{"w": (dim*a_out, dim*a_in),
            "b": (dim*a_out,)}``, hidden layers also ``"g": (dim*a_out,)``; a
            conditional network's first layer also ``"c": (dim*a_out, context_dim)``.
        dim: event size.
        context: ``(..., context_dim)`` for a conditional network (None otherwise):
            it enters the first layer's pre-activations as ``c @ context``, a
            shift of every unit that leaves the network monotone and
            autoregressive in ``x`` and its Jacobian unchanged.
    """

    def __init__(self, params: list[dict], dim: int, context: jax.Array | None = None):
        super().__init__(event_ndims_in=1)
        self._params = params
        self._dim = dim
        self._context = context

    def _layers(self):
        for layer in self._params:
            n_out, n_in = layer["w"].shape
            a_out, a_in = n_out // self._dim, n_in // self._dim
            diag, lower = block_masks(self._dim, a_out, a_in)
            w = layer["w"]
            # Double where: exp of the masked-out entries never overflows into NaN gradients.
            weight = jnp.where(diag > 0, jnp.exp(jnp.where(diag > 0, w, 0.0)), 0.0) + lower * w
            idx = np.arange(self._dim)
            log_diag = w.reshape(self._dim, a_out, self._dim, a_in)[idx, :, idx, :]
            yield layer, weight, log_diag

    def _forward(self, x: jax.Array, with_log_det: bool):
        h = x
        log_jac = jnp.zeros(x.shape + (1,), x.dtype)  # (..., dim, a_in): d h / d x_i per block
        for layer, weight, log_diag in self._layers():
            h = h @ weight.T + layer["b"]
            if "c" in layer and self._context is not None:
                h = h + self._context.astype(h.dtype) @ layer["c"].T
            if with_log_det:
                # log_jac[..., i, o] = logsumexp_k(log_diag[i, o, k] + log_jac[..., i, k])
                log_jac = jax.nn.logsumexp(log_diag + log_jac[..., None, :], axis=-1)
            if "g" in layer:
                a = jnp.expm1(layer["g"])
                t = jnp.tanh(h)
                if with_log_det:
                    log_act = jnp.log1p(a * (1.0 - t * t))
                    log_jac = log_jac + log_act.reshape(log_jac.shape)
                h = h + a * t
        if not with_log_det:
            return h, None
        return h, log_jac.reshape(x.shape).sum(-1)

    def forward_and_log_det(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x: (..., dim) -> (y: (..., dim), log_det: (...)); one network pass."""
        return self._forward(x, with_log_det=True)

    def forward(self, x: jax.Array) -> jax.Array:
        """x: (..., dim) -> y: (..., dim), without the Jacobian bookkeeping."""
        return self._forward(x, with_log_det=False)[0]

    def inverse_and_log_det(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """y: (..., dim) -> (x: (..., dim), log_det: (...)), numerically.

        Coordinates are solved in order; each by doubling a bracket around the
        root and then bisecting, which is safe because ``y_i`` is strictly
        increasing and unbounded in ``x_i``.
        """

        def solve_coordinate(i, x):
            def f(xi):
                return self.forward(x.at[..., i].set(xi))[..., i] - y[..., i]

            def expand(_, bracket):
                lo, hi = bracket
                lo = jnp.where(f(lo) > 0, 2.0 * lo, lo)
                hi = jnp.where(f(hi) < 0, 2.0 * hi, hi)
                return lo, hi

            ones = jnp.ones(y.shape[:-1], y.dtype)
            lo, hi = jax.lax.fori_loop(0, _EXPAND_STEPS, expand, (-ones, ones))

            def bisect(_, bracket):
                lo, hi = bracket
                mid = 0.5 * (lo + hi)
                above = f(mid) > 0
                return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

            lo, hi = jax.lax.fori_loop(0, _BISECT_STEPS, bisect, (lo, hi))
            return x.at[..., i].set(0.5 * (lo + hi))

        x = jax.lax.fori_loop(0, self._dim, solve_coordinate, jnp.zeros_like(y))
        _, log_det = self.forward_and_log_det(x)
        return x, -log_det
