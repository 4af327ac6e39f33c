"""Benchmarks comparing flowvi with peer variational-inference libraries.

Run ``python -m benchmarks.run --help``; see ``benchmarks/README.md``.
Peer libraries (flowjax, blackjax, ...) are imported only inside the per-run
worker subprocess, so importing this package needs only JAX and NumPy.
"""
