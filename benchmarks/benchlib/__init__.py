"""The measuring code of benchmarks/bench.py, one module per benchmark."""
