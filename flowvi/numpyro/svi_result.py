"""`to_posterior`: an SVI fit with `AutoFlow` as a `flowvi.Posterior`.

The guide's flow and its parameters become the posterior's flow and
parameters (one run); its target is ``flowvi.Target.from_numpyro(model,
*args, **kwargs)``, whose flat latent is the guide's (same sites, same order,
same ``biject_to`` transforms). Everything a `flowvi.fit` result offers then
works on the SVI result: ``diagnose``, ``to_arviz`` (plate dims,
``log_likelihood``, ``observed_data``), `flowvi.plots`, ``save`` and
`flowvi.neutra`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from numpyro.infer.svi import SVIRunResult

from flowvi.numpyro.autoguide import AutoFlow
from flowvi.numpyro.target import NumPyroTarget
from flowvi.posterior import Posterior


def to_posterior(guide: AutoFlow, params: dict | SVIRunResult, *model_args: Any, **model_kwargs: Any) -> Posterior:
    """The `flowvi.Posterior` of an `AutoFlow` fitted in NumPyro's SVI.

    Args:
        guide: the `flowvi.numpyro.AutoFlow` that was fitted (or a new one
            with the same settings, given the model's arguments here).
        params: the guide's parameters (``svi_result.params``, or a reloaded
            dict), or the ``SVIRunResult`` of ``svi.run`` itself, whose loss
            trace then becomes ``post.losses``.
        *model_args: the model's positional arguments, with the full data: the
            target is the whole posterior, so no subsampled plate (pass
            arguments that switch subsampling off, e.g. ``subsample_size=None``).
        **model_kwargs: the model's keyword arguments (e.g. ``y=y``), as for `model_args`.

    Returns:
        A one-run `flowvi.Posterior`: ``flow`` is ``guide.flow``, ``target`` is
        ``flowvi.Target.from_numpyro(guide.model, *model_args, **model_kwargs)``;
        ``losses`` is the SVI loss trace (negative ELBO per step) when an
        ``SVIRunResult`` was given, else empty; ``fit_seconds`` is NaN (unknown).
        Its draws for a key are the flow's, so ``post.sample_posterior(key, n)``
        has the distribution of ``guide.sample_posterior(key, params, sample_shape=(n,))``.

    Raises:
        TypeError: `guide` is not an `AutoFlow`; `params` is neither a dict nor an ``SVIRunResult``.
        ValueError: `params` lacks the guide's parameters or holds NaN or
            infinite values (the SVI run diverged); model arguments with a
            subsampled plate, or that give other latent sites than the guide's.

    Examples:
        >>> import jax, optax, numpyro, numpyro.distributions as dist
        >>> from numpyro.infer import SVI, Trace_ELBO
        >>> from flowvi.numpyro import AutoFlow, to_posterior
        >>> def model(y):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with numpyro.plate("n", y.shape[0]):
        ...         numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> y = jax.numpy.ones(5)
        >>> guide = AutoFlow(model, flow="gaussian")
        >>> result = SVI(model, guide, optax.adam(1e-2), Trace_ELBO()).run(
        ...     jax.random.key(0), 100, y, progress_bar=False)
        >>> post = to_posterior(guide, result, y)
        >>> post.sample_posterior(jax.random.key(1), 3)["mu"].shape, post.losses.shape
        ((3,), (100,))
    """
    if not isinstance(guide, AutoFlow):
        raise TypeError(f"guide must be a flowvi.numpyro.AutoFlow (the guide fitted in SVI), got "
                        f"{type(guide).__name__}.")
    losses = np.zeros(0, np.float32)
    if isinstance(params, SVIRunResult):
        losses = np.asarray(params.losses, np.float32).reshape(-1)
        params = params.params
    flow_params = guide.flow_params(params, *model_args, **model_kwargs)
    bad = sum(int(np.size(leaf) - np.count_nonzero(np.isfinite(leaf))) for leaf in jax.tree.leaves(flow_params))
    if bad:
        raise ValueError(f"params holds {bad} NaN or infinite flow parameter values: the SVI run diverged, so there "
                         "is no posterior to export. Refit with a narrower start (init_scale) and an optimiser "
                         "that clips and skips non-finite steps (optax.apply_if_finite, clip_by_global_norm).")
    try:
        target = NumPyroTarget(guide.model, model_args, model_kwargs)
    except ValueError as err:
        raise ValueError(f"to_posterior needs the model's arguments for its whole posterior: {err}") from err
    fitted = guide.unconstrained_shapes
    if list(target.unconstrained_shapes.items()) != list(fitted.items()):
        raise ValueError(f"the model's latent sites with these arguments, {target.unconstrained_shapes}, differ "
                         f"from the guide's, {fitted}: pass the arguments the guide was fitted with.")
    steps = int(losses.size)
    non_finite = int(steps - np.count_nonzero(np.isfinite(losses)))
    reason = (f"numpyro SVI ran {steps} steps" + (f" ({non_finite} losses NaN or infinite)" if non_finite else "")
              if steps else "numpyro SVI (steps not known: pass the SVIRunResult to keep its losses)")
    return Posterior(
        flow=guide.flow, params=jax.tree.map(lambda a: a[None], flow_params), target=target, losses=losses,
        stop_reasons=[reason], steps_run=np.array([steps]), skipped_steps=np.array([non_finite]),
        fit_seconds=float("nan"),
        settings={"objective": "reverse_kl", "source": "numpyro SVI with flowvi.numpyro.AutoFlow",
                  "steps": steps, "prefix": guide.prefix, "init_scale": guide.init_scale})


__all__ = ["to_posterior"]
