"""The version of loglik (one place; the package and the self-check cache read it)."""

__version__ = "0.1.0"
