"""Presentation of results: plots (matplotlib) and reports; imported lazily."""
