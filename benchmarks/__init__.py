"""Side-by-side speed measurements; each module writes results/benchmarks/<name>.md.

Run as `python -m benchmarks.<name> [--options]` from the repository root.
"""
