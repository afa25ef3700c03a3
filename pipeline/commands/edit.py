"""What if: regenerate, interpolate, patch (generate from neighbours) or steer stored samples.

Each operation writes its results to the store as samples of the run `edit-<parent run>`, with their
provenance (the edit_* columns), and prints their sample ids one per line in the order asked (frames in
order, alpha values in the order given). Asking for the same edit again prints the same ids and adds
nothing. The model, checkpoint and sampling settings come from the parent's run manifest; --checkpoint,
--base-model and --device override them. Every model family has them: --label for the class models (demo,
imagenet), --prompt for the text-to-image ones (sd15, sdxl, sdxl-4step, sdxl-4step-lora), whose interpolation
mixes the text encoders' outputs and pooled embeddings and whose patch/steer act on a UNet layer's map.

  python -m pipeline edit --store DIR regenerate  --sample ID [--label N | --prompt TEXT] [--seed S]
  python -m pipeline edit --store DIR interpolate --from ID --to ID --frames 8
  python -m pipeline edit --store DIR patch       --sample ID --layer L --set ID,ID,... [--steps all|K,...]
  python -m pipeline edit --store DIR steer       --sample ID --layer L --from-set ID,... --to-set ID,... \\
                                                  --alpha 0,0.5,1,2
"""

from __future__ import annotations

import argparse
import math
import sys

from pipeline.commands.argtypes import comma_list

_ids = comma_list(str, "sample ids")
_alphas = comma_list(float, "numbers", math.isfinite, "expected comma-separated finite numbers")


def _int(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer, {low} or more, got {text!r}")
        return value
    parse.__name__ = "integer"
    return parse


def _common(p: argparse.ArgumentParser, top: bool) -> None:
    keep = {} if top else {"default": argparse.SUPPRESS}
    p.add_argument("--checkpoint", help="override the run manifest's checkpoint (local file/folder or hf://...)",
                   **({"default": None} if top else keep))
    p.add_argument("--base-model", help="override the run manifest's base model (text-to-image models)",
                   **({"default": None} if top else keep))
    p.add_argument("--device", help="auto (CUDA, MPS, CPU), or e.g. cuda:1, cpu (default: auto)",
                   **({"default": "auto"} if top else keep))
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr",
                   **({} if top else keep))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default="data", help="store folder (default: ./data)")
    _common(p, top=True)
    ops = p.add_subparsers(dest="operation", required=True, metavar="OPERATION")

    r = ops.add_parser("regenerate", help="the sample with another label (or prompt) and/or seed")
    r.add_argument("--sample", required=True, help="sample id")
    cond = r.add_mutually_exclusive_group()
    cond.add_argument("--label", type=_int(0), help="class label (class models: demo, imagenet)")
    cond.add_argument("--prompt", help="text prompt (text-to-image models)")
    r.add_argument("--seed", type=_int(0), help="noise seed (default: the sample's)")

    i = ops.add_parser("interpolate", help="frames between two samples of one run (the ends are the parents)")
    i.add_argument("--from", dest="from_id", required=True, help="sample id of the first frame")
    i.add_argument("--to", dest="to_id", required=True, help="sample id of the last frame")
    i.add_argument("--frames", type=_int(2), default=8, help="number of frames, both ends included (default 8)")

    pa = ops.add_parser("patch", help="generate from neighbours: a layer's output replaced by a set's mean")
    pa.add_argument("--sample", required=True, help="sample id whose noise and condition are used")
    pa.add_argument("--layer", required=True, help="layer name (python -m pipeline layers --model M lists them)")
    pa.add_argument("--set", dest="set_ids", type=_ids, required=True, help="comma-separated sample ids")
    pa.add_argument("--steps", default="all", help="'all' (default) or comma-separated sampling steps, 0-based")

    s = ops.add_parser("steer", help="add alpha x (mean of --to-set - mean of --from-set) to a layer's output")
    s.add_argument("--sample", required=True, help="sample id to steer")
    s.add_argument("--layer", required=True, help="layer name")
    s.add_argument("--from-set", dest="from_ids", type=_ids, required=True, help="set A: comma-separated ids")
    s.add_argument("--to-set", dest="to_ids", type=_ids, required=True, help="set B: comma-separated ids")
    s.add_argument("--alpha", dest="alphas", type=_alphas, default=[0.0, 0.5, 1.0, 2.0],
                   help="comma-separated strengths, results in this order (default 0,0.5,1,2)")
    for sub in (r, i, pa, s):
        _common(sub, top=False)


def run(args: argparse.Namespace) -> int:
    from pipeline.checkpoints import CheckpointMismatch
    from pipeline.commands.errors import first_line, store_write_error
    from pipeline.edit import EditError, Editor, parse_steps
    from store import ManifestMismatch

    def progress(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    try:
        editor = Editor(args.store, checkpoint=args.checkpoint, base_model=args.base_model,
                        device=None if args.device == "auto" else args.device, progress=progress)
        op = args.operation
        if op == "regenerate":
            ids = editor.regenerate(args.sample, label=args.label, prompt=args.prompt, seed=args.seed)
        elif op == "interpolate":
            ids = editor.interpolate(args.from_id, args.to_id, args.frames)
        elif op == "patch":
            ids = editor.patch(args.sample, args.layer, args.set_ids, parse_steps(args.steps))
        else:
            ids = editor.steer(args.sample, args.layer, args.from_ids, args.to_ids, args.alphas)
    except (EditError, CheckpointMismatch, ManifestMismatch, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {store_write_error(exc, args.store, resumable=False)}", file=sys.stderr)
        return 2
    except (RuntimeError, AssertionError) as exc:  # torch: an unknown device, or one this build lacks
        print(f"error: on device {args.device}: {first_line(exc)}", file=sys.stderr)
        return 2
    for sid in ids:
        print(sid)
    return 0
