"""Offline evaluation: ranking metrics (``metrics``), the tune-then-test protocol (``protocol``), the
bootstrap intervals and Holm-corrected paired tests (``stats``) and metrics by slice (``slices``).

All sit low, beside the candidate contract: they import nothing above
``recsys.candidates.base`` and ``recsys.data``. The table of evaluable models and the run of
``recsys evaluate`` live above the pipeline, in :mod:`recsys.experiments`.
"""
