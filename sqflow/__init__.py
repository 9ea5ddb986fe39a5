"""sqflow engine: Stochastic Quantization, embeddings, stores and drift statistics (no Prefect)."""

from .estimator import StochasticQuantization

__all__ = ["StochasticQuantization"]
__version__ = "0.1.0"
