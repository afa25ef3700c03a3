"""Distil a 1-step demo student from the demo model with DMD2's recipe and write its weights.

The student and a fake-score network start from the demo teacher; the fake network learns the student's
distribution with the denoising loss (several steps per student step) and the student follows the
distribution-matching gradient (pipeline/distill.py). Progress lines give the student's 1-step recognition
by the digit classifier and its intra-class diversity. `generate --model demo-student` samples the result.
"""

from __future__ import annotations

import argparse
import time

from pipeline.commands.argtypes import non_negative_int, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.distill import DISTILL_TRAIN

    p.add_argument("--steps", type=positive_int, default=DISTILL_TRAIN["steps"],
                   help=f"student updates (default {DISTILL_TRAIN['steps']})")
    p.add_argument("--batch-size", type=positive_int, default=DISTILL_TRAIN["batch_size"],
                   help=f"samples per update (default {DISTILL_TRAIN['batch_size']})")
    p.add_argument("--fake-steps", type=positive_int, default=DISTILL_TRAIN["fake_steps"],
                   help=f"fake-score updates per student update (default {DISTILL_TRAIN['fake_steps']})")
    p.add_argument("--out", default=None,
                   help="weights file (default: the shipped pipeline/data/demo_student.safetensors)")
    p.add_argument("--teacher", default=None,
                   help="teacher weights (default: the shipped pipeline/data/demo_edm.safetensors)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--threads", type=positive_int, default=2,
                   help="CPU threads (default 2; on a machine busy with other work 1 can be many times faster)")
    p.add_argument("--eval-every", type=non_negative_int, default=50,
                   help="student steps between recognition/diversity checks (0: only at the end)")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from pipeline import demo_model, distill

    out = Path(args.out) if args.out else distill.DEMO_STUDENT_WEIGHTS
    if out.is_dir():
        print(f"error: --out {out} is a folder; give a .safetensors file", file=sys.stderr)
        return 2
    try:  # before training: a run of minutes must not fail at its end on a folder it cannot write
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.with_name(out.name + ".probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        print(f"error: cannot write {out}: {exc}", file=sys.stderr)
        return 2
    try:
        teacher = demo_model.load_demo_model(args.teacher)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: cannot load the teacher: {exc}", file=sys.stderr)
        return 2
    start = time.monotonic()
    state = distill.train_student(
        teacher, seed=args.seed, threads=args.threads, eval_every=args.eval_every or args.steps,
        on_log=lambda r: print(distill.log_line(r, args.steps), flush=True)
        if "recognition" in r or r["step"] % 10 == 0 else None,
        steps=args.steps, batch_size=args.batch_size, fake_steps=args.fake_steps)
    seconds = time.monotonic() - start
    final = state.history[-1]
    hp = {k: v for k, v in state.hp.items()}
    meta = {"config": repr(demo_model.DEMO_CONFIG), "recipe": "DMD2 distribution matching (pipeline/distill.py)",
            "distill": repr(hp), "steps": str(state.step), "step": str(state.step), "seed": str(args.seed), "threads": str(args.threads),
            "teacher": str(args.teacher or "shipped demo weights"), "seconds": f"{seconds:.0f}",
            "recognition": f"{final['recognition']:.4f}", "diversity": f"{final['diversity']:.4f}"}
    demo_model._save_weights(state.student, out, meta)
    print(f"trained {state.step} student steps in {seconds:.0f}s ({seconds / state.step:.2f}s a step); "
          f"1-step samples recognised {final['recognition']:.1%}, intra-class diversity {final['diversity']:.3f}; "
          f"wrote {out}")
    return 0
