"""Experiments over the whole stack: the table of evaluable models (``models``), the library
behind ``recsys evaluate`` (``evaluate``) and what its report shows beyond the metrics (``analysis``).

It sits above ``recsys.pipeline`` (the two-stage model is one of the models) and below the CLI;
``recsys.evaluation`` (metrics and the tune-then-test protocol) stays below both and never imports
this package.
"""
