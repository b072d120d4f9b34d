"""Bench: run a matrix of server settings under one load, report, and compare runs."""

from tuneserve.bench.compare import compare, format_comparison, parse_rule
from tuneserve.bench.config import BenchMatrix, Load, Setting, Workload
from tuneserve.bench.report import markdown_table, write_report
from tuneserve.bench.run import run_bench

__all__ = ["BenchMatrix", "Load", "Setting", "Workload", "compare", "format_comparison", "markdown_table",
           "parse_rule", "run_bench", "write_report"]
