"""Start the app with `streamlit run` in this process (browser tests and the app benchmark).

    python tests/browser/serve.py --port 8601 --store DIR [--stand-in-projector] [--torch-first] [--openmp-probe]

``--stand-in-projector`` installs the tests' instant PCA projection engine (``tests.app_fixtures.
FakeProjector``) before Streamlit starts, so that a test or a benchmark measures the app and the browser,
not a UMAP fit (``benchmarks/bench_project.py`` measures those).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", required=True, help="store folder the app opens (DMD2VIZ_STORE)")
    parser.add_argument("--stand-in-projector", action="store_true")
    parser.add_argument("--torch-first", action="store_true",
                        help="import torch before the app (as a first start's demo build does: its libgomp is then "
                             "loaded globally, where OpenBLAS sees OpenMP regions)")
    parser.add_argument("--openmp-probe", action="store_true",
                        help="once the app's entry script has run, call BLAS from inside an OpenMP region of this "
                             "server (a parallel numba kernel): OpenBLAS writes its 'Detect OpenMP Loop' warning "
                             "to the log unless the server's thread pools prevent it; prints 'openmp probe done'")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)  # .streamlit/config.toml is read from the working folder
    os.environ["DMD2VIZ_STORE"] = args.store
    if args.torch_first:
        import torch  # noqa: F401
    if args.openmp_probe:
        threading.Thread(target=_openmp_probe, daemon=True, name="openmp-probe").start()
    if args.stand_in_projector:
        from app import data
        from tests.app_fixtures import FakeProjector

        data.set_projector(FakeProjector())
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(ROOT / "app" / "streamlit_app.py"), "--server.port", str(args.port),
                "--server.address", "127.0.0.1", "--server.headless", "true"]
    return cli.main()


def _openmp_probe() -> None:
    """Wait for the entry script (it imports app.state), then run BLAS in each thread of a numba OpenMP region."""
    while "app.state" not in sys.modules:
        time.sleep(0.2)
    from tests.openmp_probe import blas_in_openmp_region

    blas_in_openmp_region()
    print("openmp probe done", flush=True)


if __name__ == "__main__":
    sys.exit(main())
