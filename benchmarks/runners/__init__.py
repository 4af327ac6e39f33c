"""Per-library runners and the registry of benchmark methods.

Every runner module exposes ``run(target_name, method, steps, num_samples,
learning_rate, seed, time_budget, num_draws=20_000) -> dict`` with keys
``draws`` (num_draws, dim), ``log_q`` (num_draws,), ``compile_s``,
``s_per_1000``, ``n_params``, ``steps`` (steps actually run) and ``versions``.
Runner modules import their library lazily, inside ``run``.
"""

METHODS: dict[str, str] = {
    # flowvi: one method per family (sizes from runners.common.sizes)
    "flowvi_gaussian_diag": "flowvi_runner",
    "flowvi_gaussian_full": "flowvi_runner",
    "flowvi_affine_coupling": "flowvi_runner",
    "flowvi_spline_coupling": "flowvi_runner",
    "flowvi_iaf": "flowvi_runner",
    "flowvi_iaf_spline": "flowvi_runner",  # the architecture of flowjax_maf_rqs (invert=False)
    "flowvi_maf": "flowvi_runner",
    "flowvi_bnaf": "flowvi_runner",
    # flowjax, reverse KL with invert=False
    "flowjax_maf_rqs": "flowjax_runner",
    "flowjax_bnaf": "flowjax_runner",
    # NumPyro autoguides under SVI (``_pbar``: svi.run with its progress bar, a Python loop)
    "numpyro_iaf": "numpyro_runner",
    "numpyro_iaf_pbar": "numpyro_runner",
    "numpyro_bnaf": "numpyro_runner",
    "numpyro_bnaf_pbar": "numpyro_runner",
    "numpyro_normal": "numpyro_runner",
    "numpyro_mvn": "numpyro_runner",
    # blackjax Gaussian VI
    "blackjax_meanfield": "blackjax_runner",
    "blackjax_fullrank": "blackjax_runner",
}
