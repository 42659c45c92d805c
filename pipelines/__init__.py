"""Heavy, optional data pipelines for r2vcal (environments, policies, collection).

Imports :mod:`r2vcal`, never the reverse. Install with ``pip install r2vcal[pipelines]``.
"""
