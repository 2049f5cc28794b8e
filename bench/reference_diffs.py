"""Print the max abs differences between our model and transformers' LlavaOnevision/LlavaNext.

Runs tests/model_runtime/arch/test_reference_hf.py in-process (tiny random weights, float32,
eager attention, CPU) and prints every compared quantity with its measured difference.
Usage (from the repository root): .venv/bin/python bench/reference_diffs.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = "tests.model_runtime.arch.test_reference_hf"


class _Report:
    def pytest_sessionfinish(self, session) -> None:
        measured = sys.modules[MODULE].MEASURED
        print(f"\n{'case':48s} max abs difference")
        for name, diff in sorted(measured.items()):
            print(f"{name:48s} {diff:.3g}")


def main() -> int:
    test_file = ROOT / (MODULE.replace(".", "/") + ".py")
    return int(pytest.main(["-q", "-p", "no:cacheprovider", "-n", "0", "--rootdir", str(ROOT), str(test_file)],
                           plugins=[_Report()]))


if __name__ == "__main__":
    sys.exit(main())
