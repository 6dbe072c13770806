"""Benchmarks: throughput, memory and latency scripts, each printing JSON lines and comparing
against a baseline measured in the same run. Run them from the repository root as modules,
``python -m benchmarks.NAME``; what they share is :mod:`benchmarks.common`. Not imported by the
package or the tests."""
