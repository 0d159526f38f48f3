"""Offline evaluation: ranking metrics (``metrics``), the tune-then-test protocol (``protocol``) and
the table of evaluable models (``models``)."""
