"""What every benchmark script does around its own measurement: repeat a run in a fresh temporary directory, then
print the median of each figure."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path


def repeat(one_run: Callable[[Path], dict[str, float]], runs: int) -> list[dict[str, float]]:
    """`one_run` `runs` times, each in a new temporary directory removed afterwards."""
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            results.append(one_run(Path(tmp)))
    return results


def report(title: str, results: list[dict[str, float]], *, width: int, spec: str, unit: str = "") -> None:
    """The title, then a line per figure: its name padded to `width`, its median formatted with `spec`."""
    print(title)
    for key in results[0]:
        print(f"  {key:{width}} {statistics.median(r[key] for r in results):{spec}}{unit}")
