"""The test suite's process launcher is the project's own (benchmarks use it too)."""

from fusionserve.launch import ROOT, LocalStack

Stack = LocalStack

__all__ = ["ROOT", "Stack"]
