"""The benchmark scripts still run against the current code and print their result lines (tiny sizes; no
timing is asserted: benchmarks report ratios, they are not timed tests)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.mark.parametrize("script, args, expected", [
    ("bench_generate.py", ["--num-samples", "40", "--batch-size", "20", "--repeats", "1"],
     [r"^bare generation: +\d+\.\d samples/s$", r"^with hooks \+ store writes: +\d+\.\d samples/s$",
      r"^ratio=\d+\.\d{3}$"]),
    ("bench_store.py", ["--rows", "400", "--dim", "64", "--batch", "100", "--repeats", "1"],
     [r"^  write, no fsync on either side: +\d+\.\d\dx", r"^  read one layer: +\d+\.\d\dx"]),
    ("bench_search.py", ["--rows", "2000", "--repeat", "1"],
     [r"^slowest query, fastest run: DuckDB search \d+ ms", r"^\(cat OR dog\) \"in the rain\" +\d+ "]),
    ("bench_edit.py", ["--per-class", "2", "--repeats", "1"],
     [r"^fresh +\d+\.\d ms$", r"^edit_ratio_interpolate=\d+\.\d\d$", r"^edit_ratio_patch=\d+\.\d\d$"]),
    ("bench_analysis.py", ["--n", "2000", "--repeat", "1"],
     [r"^class separation +\d+\.\d\ds +\d", r"^clusters hdbscan +\d", r"^analysis_ratio=\d+\.\d\d$"]),
    ("bench_compare.py", ["--n", "400", "--dim", "64", "--repeat", "1"],
     [r"^precision +\d", r"^fd +\d", r"^same numbers: yes$", r"^compare_ratio=\d+\.\d\d$"]),
])
def test_benchmark_prints_its_result_lines(script, args, expected, tmp_path):
    out = run(script, *args, *(["--dir", str(tmp_path)] if script == "bench_generate.py" else []))
    for pattern in expected:
        assert re.search(pattern, out, re.MULTILINE), f"{pattern!r} not in:\n{out}"
    if script == "bench_generate.py":
        assert out.rstrip().splitlines()[-1].startswith("ratio=")  # the last line is the public one
