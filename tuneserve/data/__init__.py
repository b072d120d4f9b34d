"""Data below the stages: the demo tasks and dataset files, shared by finetune, optimize, evals and bench."""

from tuneserve.data.demo import Sample, demo_samples, task_names
from tuneserve.data.rows import DataError, DatasetSpec, assistant, file_rows, spread, user

__all__ = ["DataError", "DatasetSpec", "Sample", "assistant", "demo_samples", "file_rows", "spread", "task_names", "user"]
