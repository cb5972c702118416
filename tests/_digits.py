"""The digits benchmark script, loaded as a module for the CI-sized runs of its training loop."""

import importlib.util
from pathlib import Path


def load_digits_benchmark():
    """benchmarks/train_digits.py as a module (its data, model and training loop)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_digits.py"
    spec = importlib.util.spec_from_file_location("train_digits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
