"""Start the app with `streamlit run` in this process (browser tests and the app benchmark).

    python tests/browser/serve.py --port 8601 --store DIR [--stand-in-projector] [--torch-first]

``--stand-in-projector`` installs the tests' instant PCA projection engine (``tests.app_fixtures.
FakeProjector``) before Streamlit starts, so that a test or a benchmark measures the app and the browser,
not a UMAP fit (``benchmarks/bench_project.py`` measures those).
"""

from __future__ import annotations

import argparse
import os
import sys
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
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)  # .streamlit/config.toml is read from the working folder
    os.environ["DMD2VIZ_STORE"] = args.store
    if args.torch_first:
        import torch  # noqa: F401
    if args.stand_in_projector:
        from app import data
        from tests.app_fixtures import FakeProjector

        data.set_projector(FakeProjector())
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(ROOT / "app" / "streamlit_app.py"), "--server.port", str(args.port),
                "--server.address", "127.0.0.1", "--server.headless", "true"]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
