"""Experiments over the whole stack: the table of evaluable models (``models``), the library
behind ``recsys evaluate`` (``evaluate``), what its report shows beyond the metrics (``analysis``),
the records of every run (``runs``; ``run_compare`` and ``run_exports`` read them), and what the
notebooks call besides (``explore``: samples, histories, error analysis; ``tables``: the report's
JSON as polars tables).

It sits above ``recsys.pipeline`` (the two-stage model is one of the models) and below the CLI;
``recsys.evaluation`` (metrics and the tune-then-test protocol) stays below both and never imports
this package.
"""
