"""Benchmarks, run from the checkout as modules (``python -m bench.store``); not part of the installed package.

Shared code: bench.environment (the stores they run on), bench.figures (plans, tables, JSON); they start their
servers with the development harness (the top-level ``harness`` package the tests use too)."""
