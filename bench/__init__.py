"""NOFX benchmarks: ``python -m bench SCENARIO`` (or ``nofx bench SCENARIO``) from a checkout."""
