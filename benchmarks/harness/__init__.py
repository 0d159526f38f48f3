"""Real servers for the end-to-end tests and ``benchmarks.serving``: not part of the service.

``process`` starts a server (``recsys serve`` or ``bentoml serve TARGET``) as a subprocess on a free
port and stops its whole process group; ``echo`` is the bare BentoML service that is the serving
benchmark's floor. They live here, not in ``serving/``, so the Bento carries only the service.
"""
