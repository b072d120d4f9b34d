"""Benchmarks: launch real servers, drive load, compare settings."""
