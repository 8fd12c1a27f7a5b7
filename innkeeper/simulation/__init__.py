"""Test and benchmark harnesses: simulated voice and text callers, a server process, scripted booking calls.

Never imported by the product (`agent`, `models`, `serve`, `tuning`); the CLI's `demo` and `call` commands,
the tests and the benchmarks use it.
"""
