"""The HTTP service (BentoML) that answers top-N requests from a published model bundle.

``serving.service`` is the service, ``serving.schemas`` its request/response models,
``serving.runtime`` the settings and atomic model swap, ``serving.guard`` the 4xx middleware,
``serving.process`` runs a server as a subprocess (tests, benchmark), ``serving.echo`` the bare
echo service used as the benchmark floor. Importing this package imports nothing heavy.
"""
