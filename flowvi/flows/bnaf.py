"""Block neural autoregressive flow (De Cao, Aziz and Titov, 2020)."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from flowvi.bijectors import BlockAutoregressive, Reverse
from flowvi.flows.base import Flow, check_context_dim, layered_flow, with_context_dim
from flowvi.validation import check_int_tuple, check_positive_int

_INIT_LOG_SD = 0.3
_INIT_GAIN = 2.0
_INIT_BIAS_SD = 2.0


def _init_network(key: jax.Array, dim: int, blocks: tuple[int, ...]) -> list[dict]:
    """Identity-at-init parameters for one network with block sizes ``(1, *blocks, 1)``.

    Diagonal blocks get random positive entries and hidden units random
    biases (so units bend at different places once their activations turn
    nonlinear). With the activations at their identity setting the network is
    linear, and the last layer's scale and bias are solved so that it is
    exactly ``y = x``.
    """
    sizes = (1, *blocks, 1)
    keys = jax.random.split(key, 2 * (len(sizes) - 1))
    layers = []
    log_chain = jnp.zeros((dim, 1))  # log of the product of diagonal blocks so far: (dim, a)
    idx = np.arange(dim)
    for i, (a_in, a_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        last = i == len(sizes) - 2
        log_diag = _INIT_LOG_SD * jax.random.normal(keys[2 * i], (dim, a_out, a_in)) - np.log(a_in)
        if i == 0:
            log_diag = log_diag + np.log(_INIT_GAIN)
        log_chain = jax.nn.logsumexp(log_diag + log_chain[:, None, :], axis=-1)
        if last:
            log_diag = log_diag - log_chain[:, :, None]  # (dim, 1, a_in): makes the chain exactly 1
        w = jnp.zeros((dim, a_out, dim, a_in)).at[idx, :, idx, :].set(log_diag)
        bias = jnp.zeros(dim * a_out) if last else _INIT_BIAS_SD * jax.random.normal(keys[2 * i + 1], (dim * a_out,))
        layer = {"w": w.reshape(dim * a_out, dim * a_in), "b": bias}
        if not last:
            layer["g"] = jnp.zeros(dim * a_out)
        layers.append(layer)
    # The network is now y = x + c (linear, unit diagonal): remove the offset c.
    offset = BlockAutoregressive(layers, dim).forward(jnp.zeros(dim))
    layers[-1]["b"] = -offset
    return layers


def bnaf(dim: int, layers: int = 2, block_size=(16,), context_dim: int = 0) -> Flow:
    """Block neural autoregressive flow.

    Sampling and the density of its own samples cost one pass per layer. The
    inverse (``log_prob`` of an arbitrary point) is computed *numerically* by
    bisection, coordinate by coordinate: exact to float precision but about
    ``100 * dim`` network passes per layer. Layers alternate the coordinate order.

    Args:
        dim: event size.
        layers: number of BNAF networks stacked (order reversed between them).
        block_size: hidden block sizes of each network, e.g. ``(50, 50)`` for two
            hidden layers of ``50 * dim`` units.
        context_dim: size of the context of a conditional flow (0: unconditional); it
            shifts the first layer's units of every network (zero at init).
    """
    layers = check_positive_int("layers", layers)
    blocks = check_int_tuple("block_size", block_size)
    context_dim = check_context_dim(context_dim)

    def make_layer(network_params, flip, context) -> distrax.Bijector:
        return distrax.Chain([Reverse(flip), BlockAutoregressive(network_params, dim, context), Reverse(flip)])

    def init_layer(key: jax.Array) -> list[dict]:
        network = _init_network(key, dim, blocks)
        if context_dim:
            network[0]["c"] = jnp.zeros((network[0]["w"].shape[0], context_dim))
        return network

    hyper = with_context_dim((("block_size", blocks), ("layers", layers)), context_dim)
    return layered_flow("bnaf", dim, hyper, layers, init_layer, make_layer, jnp.arange(layers) % 2 == 1,
                        "numerical")
