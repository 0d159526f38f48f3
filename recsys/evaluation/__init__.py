"""Offline evaluation: ranking metrics (``metrics``) and the tune-then-test protocol (``protocol``).

Both sit low, beside the candidate contract: they import nothing above
``recsys.candidates.base`` and ``recsys.data``. The table of evaluable models and the run of
``recsys evaluate`` live above the pipeline, in :mod:`recsys.experiments`.
"""
