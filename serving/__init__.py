"""The HTTP service (BentoML) that answers top-N requests from a published model bundle.

``serving.service`` is the service, ``serving.schemas`` its request/response models,
``serving.runtime`` the settings and atomic model swap, ``serving.guard`` the 4xx middleware. What
starts servers for tests and benchmarks is in ``benchmarks.harness``, outside the Bento. Importing
this package imports nothing heavy.
"""
