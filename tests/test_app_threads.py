"""The app server's thread pools: OpenBLAS never runs its own threads inside an OpenMP region.

numpy's and scipy's OpenBLAS (pthreads builds) print "OpenBLAS Warning : Detect OpenMP Loop and this application
may hang" when called with several threads from inside an OpenMP parallel region. In the server, numba's
parallel kernels (UMAP, NNDescent) and torch (the demo build) share one libgomp, which torch loads globally,
so OpenBLAS sees those regions. ``app.threads`` (imported first by the entry script) gives OpenBLAS one thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WARNING = "Detect OpenMP Loop"

# torch first (its libgomp, loaded globally, is the one numba's OpenMP layer then uses), then a parallel numba
# kernel that calls BLAS (np.dot) in each of its threads: the situation of the server.
_PROBE = """
import sys
if sys.argv[1] == "app":
    from app import threads  # what app/streamlit_app.py imports first
import torch  # noqa: F401
from tests.openmp_probe import blas_in_openmp_region

print(blas_in_openmp_region())
from threadpoolctl import threadpool_info
print("blas threads", sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}))
"""


def _probe(mode: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update(PYTHONPATH=str(ROOT), NUMBA_THREADING_LAYER="omp", NUMBA_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-c", _PROBE, mode], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_openblas_inside_openmp_regions_warns_without_the_app_settings_and_not_with_them():
    pytest.importorskip("torch")
    pytest.importorskip("numba")
    bare = _probe("bare")
    assert bare.returncode == 0, bare.stderr
    if WARNING not in bare.stderr:  # a BLAS without the check (one core, another build): nothing to prove here
        pytest.skip("this OpenBLAS does not warn inside OpenMP regions")
    app = _probe("app")
    assert app.returncode == 0, app.stderr
    assert WARNING not in app.stderr, app.stderr
    assert "blas threads [1]" in app.stdout
