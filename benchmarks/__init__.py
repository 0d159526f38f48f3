"""Speed and quality benchmarks, each run from the repository root as ``python -m benchmarks.NAME``.

Run as modules, the benchmarks import ``recsys``, ``feature_store`` and ``serving`` from the checkout
with no ``sys.path`` edits, and no script's name (``feature_store.py``, ``serving.py``) can shadow a
package. Every benchmark prints a table and writes flat JSON with its provenance to
``benchmarks/results/NAME.json`` through :func:`benchmarks.provenance.write_results`.
``benchmarks.harness`` starts real servers, for these benchmarks and for the end-to-end tests.
One-off studies are not here: they are written up, with their figures, in ``docs/studies/``.
"""
