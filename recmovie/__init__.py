"""recmovie: experiment-tracked top-K movie recommendation from implicit feedback."""

__version__ = "0.1.0"
