"""sqflow engine: Stochastic Quantization, embeddings, stores and drift statistics (no Prefect).

``StochasticQuantization`` is imported lazily so that light modules (``sqflow.store``,
``sqflow.datasets``) load without scikit-learn and numba.
"""

__all__ = ["StochasticQuantization"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "StochasticQuantization":
        from .estimator import StochasticQuantization

        return StochasticQuantization
    raise AttributeError(f"module 'sqflow' has no attribute {name!r}")
