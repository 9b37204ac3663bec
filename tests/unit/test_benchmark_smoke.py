"""The benchmark scripts run: a smoke run (figures go to benchmarks/RESULTS.md, not here).

The scripts that need a broker and Redis (load_test.py, bench_geosearch.py) are run
against real ones in tests/integration/test_load_smoke.py.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize("script", ["bench_spatial.py", "bench_core.py"])
def test_benchmark_runs_quick_and_writes_json(script: str, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "|---" in done.stdout  # the markdown table
    assert json.loads(out.read_text())  # and the JSON, not empty


@pytest.mark.parametrize(
    "script",
    ["bench_spatial.py", "bench_core.py", "bench_geosearch.py", "load_test.py", "restart.py"],
)
def test_benchmark_explains_itself(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "--json" in done.stdout
