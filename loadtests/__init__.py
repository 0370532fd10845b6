"""Load tests and the benchmark harness: how many clients one box holds (docs/performance.md)."""
