"""The cosine decay with a horizon held in the optimiser state."""

import jax.numpy as jnp
import numpy as np
import optax

from flowvi.schedules import scale_by_cosine_decay, with_horizon


def test_matches_optax_cosine_decay_for_the_same_horizon():
    steps, lr = 50, 0.1
    ours = scale_by_cosine_decay(lr, alpha=0.02)
    reference = optax.cosine_decay_schedule(lr, steps, alpha=0.02)
    params = {"w": jnp.ones(3)}
    state = with_horizon(ours.init(params), steps)
    for t in range(steps + 5):
        updates, state = ours.update({"w": jnp.ones(3)}, state)
        np.testing.assert_allclose(updates["w"], -reference(t) * np.ones(3), rtol=1e-5)


def test_horizon_is_found_inside_a_chain():
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(), scale_by_cosine_decay(1.0))
    state = with_horizon(opt.init({"w": jnp.zeros(2)}), 123)
    assert int(state[2].horizon) == 123
    assert int(state[2].count) == 0
