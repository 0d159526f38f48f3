"""Experiments over the whole stack: the table of evaluable models (``models``), the library
behind ``recsys evaluate`` (``evaluate``), what its report shows beyond the metrics (``analysis``),
and the records of every run (``runs``; ``run_compare`` and ``run_exports`` read them).

It sits above ``recsys.pipeline`` (the two-stage model is one of the models) and below the CLI;
``recsys.evaluation`` (metrics and the tune-then-test protocol) stays below both and never imports
this package.
"""
