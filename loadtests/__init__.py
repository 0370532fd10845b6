"""Load tests and the benchmark harness: how many clients one box holds (see the README's performance section)."""
