"""Benchmarks, run as scripts (``python bench/store.py``); not part of the installed package."""
