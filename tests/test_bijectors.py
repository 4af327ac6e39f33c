"""Every family's bijector, plain, inverted and conditional: log|det J| against jax.jacfwd (float64)
in both directions, inverse round trips, identity initialisation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import randomize

from flowvi import flows
from flowvi.bijectors import BlockAutoregressive, MaskedAutoregressive, Reverse
from flowvi.flows.coupling import lower_upper_linear

CASES = [
    ("gaussian", {"covariance": "diag"}),
    ("gaussian", {"covariance": "full"}),
    ("affine_coupling", {"layers": 2, "hidden": (8,)}),
    ("spline_coupling", {"layers": 2, "hidden": (8,), "bins": 4}),
    ("iaf", {"layers": 2, "hidden": (8,)}),
    ("iaf", {"layers": 2, "hidden": (8,), "transformer": "spline", "bins": 4}),
    ("maf", {"layers": 2, "hidden": (8,)}),
    ("maf", {"layers": 2, "hidden": (8,), "transformer": "spline", "bins": 4}),
    ("bnaf", {"layers": 2, "block_size": (4,)}),
    ("bnaf", {"layers": 1, "block_size": (3, 4)}),
    # Every family inverted (x = T^{-1}(u)), as fit_samples uses iaf and bnaf and anyone may use the rest.
    ("gaussian", {"covariance": "full", "inverted": True}),
    ("affine_coupling", {"layers": 2, "hidden": (8,), "inverted": True}),
    ("spline_coupling", {"layers": 2, "hidden": (8,), "bins": 4, "inverted": True}),
    ("iaf", {"layers": 2, "hidden": (8,), "transformer": "spline", "bins": 4, "inverted": True}),
    ("maf", {"layers": 2, "hidden": (8,), "inverted": True}),
    ("bnaf", {"layers": 2, "block_size": (4,), "inverted": True}),
    # Every family conditional (each point with its own context), and the two fit_samples inverts.
    ("gaussian", {"covariance": "diag", "context_dim": 2, "hidden": (8,)}),
    ("gaussian", {"covariance": "full", "context_dim": 2, "hidden": (8,)}),
    ("affine_coupling", {"layers": 2, "hidden": (8,), "context_dim": 2}),
    ("spline_coupling", {"layers": 2, "hidden": (8,), "bins": 4, "context_dim": 2}),
    ("iaf", {"layers": 2, "hidden": (8,), "context_dim": 2}),
    ("maf", {"layers": 2, "hidden": (8,), "transformer": "spline", "bins": 4, "context_dim": 2}),
    ("bnaf", {"layers": 2, "block_size": (4,), "context_dim": 2}),
    ("iaf", {"layers": 2, "hidden": (8,), "context_dim": 2, "inverted": True}),
    ("bnaf", {"layers": 2, "block_size": (4,), "context_dim": 2, "inverted": True}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in CASES]
# An inverted flow at its identity initialisation is the plain one's inverse of the identity: the
# identity checks below run on the plain flows only.
PLAIN = [i for i, (_, kw) in enumerate(CASES) if not kw.get("inverted")]
PLAIN_IDS = [IDS[i] for i in PLAIN]
CONDITIONAL = [i for i, (_, kw) in enumerate(CASES) if kw.get("context_dim") and not kw.get("inverted")]
DIM = 3


def _random_flow(name, kw, seed=0):
    flow = flows.make_flow(name, DIM, **kw)
    params = randomize(jax.jit(flow.init)(jax.random.key(seed)), jax.random.key(seed + 100), scale=0.2)
    return flow, params


def _log_dets(flow, params, xs, contexts):
    """The sampling direction's log|det J| at ``xs`` (batched, by jacfwd, point by point).

    Point ``i`` has context ``contexts[i]`` (a conditional flow; unconditional ones ignore it).
    Where sampling is root finding (inverted bnaf), whose derivative jacfwd cannot see, the
    inverse (one pass) is checked at ``T(xs)`` instead; the round trips tie the two directions.
    """
    def maps(c):
        bij = flow.apply(params, c).bijector
        if flow.sample_cost == "numerical":
            return bij.inverse, bij.inverse_and_log_det
        return bij.forward, bij.forward_and_log_det

    if flow.sample_cost == "numerical":
        xs = flow.apply(params, contexts).bijector.forward(xs)
    _, batched = maps(contexts)[1](xs)
    exact = jax.vmap(lambda x, c: jnp.linalg.slogdet(jax.jacfwd(maps(c)[0])(x))[1])(xs, contexts)
    single = jax.vmap(lambda x, c: maps(c)[1](x)[1])(xs, contexts)
    return batched, exact, single


def _round_trip(flow_apply, params, u, contexts, key):
    dist = flow_apply(params, contexts)
    x, fwd_log_det = dist.bijector.forward_and_log_det(u)
    u_back, inv_log_det = dist.bijector.inverse_and_log_det(x)
    # distrax draws point by point (vmapped), so its sampling takes one context for every draw.
    one = flow_apply(params, None if contexts is None else contexts[0])
    x2, log_q = one.sample_and_log_prob(seed=key, sample_shape=(6,))
    return u_back, inv_log_det, fwd_log_det, one.log_prob(x2), log_q


def _everything(flow, params, init_params, inputs, key):
    """All that the four tests below check of one flow, as one program (compiling is their cost)."""
    out = dict(zip(("log_det", "exact", "single"), _log_dets(flow, params, inputs["xs"], inputs["c_xs"]),
                   strict=True))
    out.update(zip(("u_back", "inv_log_det", "fwd_log_det", "log_prob", "log_q"),
                   _round_trip(flow.apply, params, inputs["u"], inputs["c_u"], key), strict=True))
    if not dict(flow.hyperparameters).get("inverted"):
        out["x_init"], out["log_det_init"] = flow.apply(init_params, inputs["c_init"]).bijector.forward_and_log_det(
            inputs["u_init"])
        out["x_random"] = flow.apply(params, inputs["c_guard"]).bijector.forward(inputs["u_guard"])
        if inputs["c_guard"] is not None:
            out["x_other_context"] = flow.apply(params, -inputs["c_guard"]).bijector.forward(inputs["u_guard"])
    return out


_compiled_everything = jax.jit(_everything, static_argnums=0)


@functools.cache
def _results(case: int) -> dict:
    """`_everything` for ``CASES[case]`` in float64, once per process (numpy arrays; the inputs too)."""
    name, kw = CASES[case]
    with jax.enable_x64(True):
        flow, params = _random_flow(name, kw)
        inputs = {"xs": jax.random.normal(jax.random.key(1), (5, DIM), jnp.float64) * 1.5,
                  "u": jax.random.normal(jax.random.key(2), (6, DIM), jnp.float64),
                  "u_init": jax.random.normal(jax.random.key(5), (7, DIM), jnp.float64),
                  "u_guard": jax.random.normal(jax.random.key(6), (4, DIM), jnp.float64)}
        # One context per point (None for an unconditional flow, which ignores it).
        points = {"c_xs": "xs", "c_u": "u", "c_init": "u_init", "c_guard": "u_guard"}
        k = flow.context_dim
        inputs.update({c: None if not k else
                       jax.random.normal(jax.random.key(10 + i), (len(inputs[x]), k), jnp.float64)
                       for i, (c, x) in enumerate(points.items())})
        out = _compiled_everything(flow, params, jax.jit(flow.init)(jax.random.key(4)), inputs, jax.random.key(3))
        return jax.device_get({**out, **inputs})


@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_log_det_matches_jacfwd(case):
    # Plain flows: the forward map; inverted ones: their forward is the plain inverse (for iaf the
    # sequential one), so together both directions of every family are checked (bnaf's root-finding
    # inverse by the round trips below). float64, random parameters (see the last test of these four).
    r = _results(case)
    np.testing.assert_allclose(r["log_det"], r["exact"], rtol=1e-8, atol=1e-8)
    # The per-point (unbatched) call agrees with the batched one.
    np.testing.assert_allclose(r["single"], r["log_det"], atol=1e-10)


@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_inverse_round_trips(case):
    r = _results(case)
    np.testing.assert_allclose(r["u_back"], r["u"], atol=1e-7)
    np.testing.assert_allclose(r["inv_log_det"], -r["fwd_log_det"], atol=1e-7)
    # Density of own samples (one pass) equals log_prob at the same points (inverse).
    np.testing.assert_allclose(r["log_prob"], r["log_q"], atol=1e-7)


@pytest.mark.parametrize("case", PLAIN, ids=PLAIN_IDS)
def test_identity_at_initialisation(case):
    r = _results(case)
    np.testing.assert_allclose(r["x_init"], r["u_init"], atol=2e-5)
    np.testing.assert_allclose(r["log_det_init"], 0.0, atol=2e-5)


@pytest.mark.parametrize("case", PLAIN, ids=PLAIN_IDS)
def test_random_parameters_are_not_identity(case):
    # Guards the tests above: the randomised flows really transform.
    r = _results(case)
    assert float(np.abs(r["x_random"] - r["u_guard"]).max()) > 1e-2


@pytest.mark.parametrize("case", CONDITIONAL, ids=[IDS[i] for i in CONDITIONAL])
def test_a_conditional_flow_depends_on_its_context(case):
    # Guards the conditional cases above: with random parameters the context changes the map
    # (and at initialisation it does not: test_identity_at_initialisation, with random contexts).
    r = _results(case)
    assert float(np.abs(r["x_random"] - r["x_other_context"]).max()) > 1e-2


def test_autoregressive_structure_of_masked_autoregressive():
    # Output i must not depend on inputs >= i (strictly lower-triangular off-diagonal Jacobian).
    flow, params = _random_flow("iaf", {"layers": 1, "hidden": (8,)})
    layer_params = jax.tree.map(lambda a: a[0], params["layers"])
    from flowvi.flows.base import affine_transformer
    from flowvi.nn import apply_mlp, made_masks
    masks = [jnp.asarray(m) for m in made_masks(DIM, (8,), 2)]
    bij = MaskedAutoregressive(lambda x: apply_mlp(layer_params, x, masks).reshape(*x.shape[:-1], DIM, 2),
                               affine_transformer, DIM)
    jac = jax.jit(jax.jacfwd(bij.forward))(jnp.array([0.3, -0.2, 1.1]))  # compiled: faster than op by op
    np.testing.assert_allclose(jnp.triu(jac, 1), 0.0)
    assert float(jnp.abs(jnp.tril(jac, -1)).max()) > 0


def test_bnaf_block_is_autoregressive_and_monotone():
    flow, params = _random_flow("bnaf", {"layers": 1, "block_size": (4,)}, seed=3)
    net = jax.tree.map(lambda a: a[0], params["layers"])
    bij = BlockAutoregressive(net, DIM)
    jac = jax.jit(jax.jacfwd(bij.forward))(jnp.array([0.5, -1.0, 2.0]))
    np.testing.assert_allclose(jnp.triu(jac, 1), 0.0)
    assert bool(jnp.all(jnp.diag(jac) > 0))


def test_reverse_bijector():
    x = jnp.arange(6.0).reshape(2, 3)
    y, log_det = Reverse().forward_and_log_det(x)
    np.testing.assert_array_equal(y, x[:, ::-1])
    np.testing.assert_array_equal(log_det, jnp.zeros(2))
    np.testing.assert_array_equal(Reverse().inverse(y), x)


def test_coupling_transforms_every_coordinate():
    # without the linear layers, so that only the couplings can make outputs depend on other coordinates
    flow, params = _random_flow("affine_coupling", {"layers": 2, "hidden": (8,), "linear": False})
    params = {**params, "affine": flow.init(jax.random.key(0))["affine"]}  # only the coupling layers act
    jac = jax.jit(jax.jacfwd(flow.apply(params).bijector.forward))(jnp.array([0.1, 0.2, 0.3]))
    off_diag = jnp.abs(jac - jnp.diag(jnp.diag(jac)))
    assert bool(jnp.all(off_diag.sum(axis=1) > 0)), "every output must depend on another coordinate"


def test_scan_over_layers_compiles_in_near_constant_time():
    # The graph does not grow with depth: the lowered program for 16 layers
    # is about the size of the one for 2 layers.
    sizes = {}
    for layers in (2, 16):
        flow = flows.make_flow("spline_coupling", DIM, layers=layers, hidden=(8,))
        params = flow.init(jax.random.key(0))
        def draw(p, flow=flow):
            return flow.apply(p).sample(seed=jax.random.key(0), sample_shape=(4,))
        text = jax.jit(draw).lower(params).as_text()
        sizes[layers] = len(text)
    assert sizes[16] < 1.2 * sizes[2]


def test_lower_upper_linear_is_identity_at_zero_and_invertible_otherwise(x64):
    np.testing.assert_allclose(lower_upper_linear(jnp.zeros((4, 4))).matrix, np.eye(4), atol=0)
    raw = 2.0 * jax.random.normal(jax.random.key(7), (4, 4), jnp.float64)
    bij = lower_upper_linear(raw)
    x = jax.random.normal(jax.random.key(8), (4,), jnp.float64)
    y, log_det = bij.forward_and_log_det(x)
    np.testing.assert_allclose(y, bij.matrix @ x, atol=1e-12)
    sign, expected = jnp.linalg.slogdet(jax.jacfwd(bij.forward)(x))
    assert sign > 0  # U's diagonal is positive, whatever raw's diagonal is
    np.testing.assert_allclose(log_det, expected, atol=1e-10)
    np.testing.assert_allclose(bij.inverse(y), x, atol=1e-10)


def test_coupling_linear_option_controls_the_parameters():
    with_linear = flows.make_flow("spline_coupling", 5, layers=3, hidden=(8,))
    without = flows.make_flow("spline_coupling", 5, layers=3, hidden=(8,), linear=False)
    assert with_linear.num_params() - without.num_params() == 3 * 5 * 5
    with pytest.raises(ValueError, match="linear must be True or False"):
        flows.make_flow("affine_coupling", 5, linear="yes")
