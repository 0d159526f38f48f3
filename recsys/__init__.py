"""Personalized e-commerce recommendations.

Importing ``recsys`` is cheap: torch, transformers, lightgbm and implicit are imported only by the
modules that need them.
"""

__version__ = "0.1.0"
