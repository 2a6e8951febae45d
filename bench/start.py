"""Start-up of the commands a user runs, as a user runs them (a new process each), beside helm's.

Prints the median wall time of `deployer --help`, `deployer render` of both examples and `helm template` of the
same chart and values, and the ratio of render to helm template (the reliability issue asks for at most 2x).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from runs import repeat, report  # bench/runs.py: this script's own folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HELM = shutil.which("helm", path=str(ROOT / ".tools" / "bin")) or "helm"


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - started


def one_run(_: Path) -> dict[str, float]:
    deployer = str(BIN / "deployer")
    hello = ROOT / "examples" / "hello"
    figures = {
        "deployer --help": timed([deployer, "--help"]),
        "deployer render (Helm chart)": timed(
            [deployer, "render", "--env", "staging", "--repo", str(hello), "--commit", "c0ffee"]
        ),
        "deployer render (Jinja2)": timed(
            [deployer, "render", "--env", "staging", "--repo", str(ROOT / "examples" / "hello-jinja"), "--commit", "c0"]
        ),
        "helm template (same chart and values)": timed(
            [HELM, "template", "hello", str(hello / "charts" / "hello"), "-f", str(hello / "environments/staging.yaml")]
        ),
    }
    figures["render / helm template"] = (
        figures["deployer render (Helm chart)"] / figures["helm template (same chart and values)"]
    )
    return figures


def main() -> None:
    # as installed from a wheel: bytecode compiled once (an environment with PYTHONDONTWRITEBYTECODE would otherwise
    # compile every module of the source tree in every process, ~0.15s that no installed deployer pays)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "deployer")], check=True)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    results = repeat(one_run, args.runs)
    report(f"start-up, median of {args.runs} runs (seconds; the last line a ratio)", results, width=40, spec=".3f")


if __name__ == "__main__":
    main()
