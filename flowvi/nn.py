"""Small neural networks as pure functions over parameter pytrees.

Conditioners inside flows are multilayer perceptrons. Their last layer is
zero-initialised so that every flow starts at the identity map.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def init_mlp(key: jax.Array, sizes: Sequence[int], zero_last: bool = True) -> list[dict]:
    """Initialise an MLP with layer widths `sizes` (input first, output last).

    Hidden layers use scaled-normal (LeCun) weights; the last layer is zero when
    `zero_last`, so the network outputs exactly zero before training.

    Returns:
        A list of ``{"w": (n_in, n_out), "b": (n_out,)}`` dicts.
    """
    keys = jax.random.split(key, len(sizes) - 1)
    layers = []
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
        last = i == len(sizes) - 2
        if last and zero_last:
            w = jnp.zeros((n_in, n_out))
        else:
            w = jax.random.normal(k, (n_in, n_out)) / np.sqrt(n_in)
        layers.append({"w": w, "b": jnp.zeros((n_out,))})
    return layers


def apply_mlp(layers: list[dict], x: jax.Array, masks: Sequence[jax.Array] | None = None) -> jax.Array:
    """Apply an MLP with GELU hidden activations.

    Args:
        layers: parameters from `init_mlp`.
        x: input of shape ``(..., n_in)``.
        masks: optional per-layer ``(n_in, n_out)`` 0/1 masks (MADE).

    Returns:
        Output of shape ``(..., n_out)``.
    """
    h = x
    for i, layer in enumerate(layers):
        w = layer["w"] if masks is None else layer["w"] * masks[i]
        h = h @ w + layer["b"]
        if i < len(layers) - 1:
            h = jax.nn.gelu(h)
    return h


def made_masks(dim: int, hidden: Sequence[int], out_per_dim: int, context_dim: int = 0) -> list[np.ndarray]:
    """Masks for a MADE network (Germain et al. 2015) with natural input order.

    Output block ``i`` (``out_per_dim`` units for input coordinate ``i``) sees
    only inputs ``0..i-1``, so the network is autoregressive. With
    ``context_dim > 0`` the network's input is ``(x, context)``: the context
    inputs have degree 0 and every output block may see them (through hidden
    units of degree 0, which see the context alone, and all others).

    Returns:
        One 0/1 ``float32`` mask ``(n_in, n_out)`` per layer. The output layer's
        columns are ordered coordinate-major: column ``i * out_per_dim + k``.
    """
    degrees_in = np.arange(1, dim + 1)
    degrees = [np.concatenate([degrees_in, np.zeros(context_dim, int)])]
    for width in hidden:
        # Hidden degrees cycle through 1..dim-1 so every conditional has capacity (0..dim-1 with a
        # context, so that the first coordinate's transform can depend on it).
        low = 0 if context_dim else 1
        span = max(dim - low, 1)
        degrees.append(np.arange(width) % span + low)
    masks = [(d_out[None, :] >= d_in[:, None]).astype(np.float32)
             for d_in, d_out in zip(degrees[:-1], degrees[1:], strict=True)]
    d_out = np.repeat(degrees_in, out_per_dim)
    masks.append((d_out[None, :] > degrees[-1][:, None]).astype(np.float32))
    return masks
