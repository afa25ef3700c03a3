"""Write a report of one layer to share: a self-contained HTML file (interactive map with hover thumbnails,
class separation and confusion heatmap, clusters with their medoid images, the outlier gallery, the CKA of
the recorded layers, the runs side by side and their manifests) and a PNG of the map beside it.

    python -m pipeline report --store data --model demo --layer midblock --out report.html

The HTML opens offline (nothing is fetched); `report.png` is written beside `report.html`. The analyses are
cached in the store: a second report of the same data reads them back.
"""

from __future__ import annotations

import argparse
import sys
import time

from pipeline.commands.project import _step


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.features import FEATURE_KINDS
    from pipeline.methods import METHODS

    p.add_argument("--store", default="data", help="store folder (default: ./data)")
    p.add_argument("--model", required=True, help="model key in the store, e.g. demo")
    p.add_argument("--layer", required=True, help="layer name, e.g. midblock")
    p.add_argument("--step", type=_step, default=None,
                   help="sampling step (default: the last recorded; negative: from the last)")
    p.add_argument("--out", default="report.html", help="the HTML file to write (default: report.html); "
                   "the PNG goes beside it (report.png)")
    p.add_argument("--feature", default=None, choices=[*FEATURE_KINDS, "pca"],
                   help="activation features: auto (by layer size, the default), mean, full, pca")
    p.add_argument("--method", default="umap", choices=list(METHODS), help="projection of the map (default umap)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    from pipeline.commands.errors import first_line
    from pipeline.report import ReportError, write_report

    t0 = time.perf_counter()
    last = [""]

    def progress(fraction: float, message: str) -> None:
        if not args.quiet and message != last[0]:
            last[0] = message
            print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)

    try:
        html_path, png_path = write_report(args.store, args.model, args.layer, args.step, out=args.out,
                                           feature=args.feature, method=args.method, progress=progress)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write the report {args.out!r}: {first_line(e)}", file=sys.stderr)
        return 2
    print(f"wrote {html_path} ({html_path.stat().st_size / 1e6:.1f} MB) and {png_path} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0
