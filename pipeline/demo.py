"""The demo store: the shipped digits model run through the same generate path as real checkpoints."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DEMO_LAYERS = ("encoder_bottleneck", "midblock", "dec.16x16_block0")
DEMO_SAMPLES_PER_CLASS = 150
DEMO_REAL_RUN = "demo-real"
DEMO_STUDENT_RUN = "demo-student"
DEMO_NAIVE_RUN = "demo-1step"
DEMO_TEACHER_RUN = "demo-teacher"
DEMO_ENCODED_RUNS = {DEMO_NAIVE_RUN: "demo-1step-encoded", DEMO_STUDENT_RUN: "demo-student-encoded",
                     DEMO_TEACHER_RUN: "demo-teacher-encoded"}
STAGING = ".demo-extras"  # inside the store: where the extra runs are built before they are moved in whole


def demo_layers(adapter) -> list[str]:
    known = adapter.layers()
    return [name for name in DEMO_LAYERS if name in known]


def build_demo_store(root: str | Path, *, samples_per_class: int = DEMO_SAMPLES_PER_CLASS,
                     batch_size: int = 100, progress: bool = True, on_batch=None, maps: bool = True,
                     on_map=None, extras: bool = False, on_ready=None, on_extra=None) -> list[str]:
    """Generate the demo runs into `root` (resumable) and return their run ids.

    Two runs of the same model: the multi-step run (trajectories across the sampling steps, with each
    step's x0 preview image: 16-px PNGs, a few hundred bytes each) and a 1-step run, so the app has
    several runs and steps to switch between. With `maps`, the map the app opens on (every demo layer at
    the last step, default parameters) is computed and cached too, so the first map needs no fit;
    `on_map(i, n, layer)` is called before each. Then `on_ready(run_ids)`: the app can show its first map.
    With `extras` (what `python -m pipeline demo` and the app's first start build), the runs to compare with
    come after that (`build_demo_extras`, progress in `on_extra(run_id, done, total)`), so they never delay the
    first map.
    """
    from pipeline.adapters.edm import load_demo
    from pipeline.generate import generate

    run_ids = []
    for steps, name in ((None, "demo-multistep"), (1, "demo-1step")):
        adapter = load_demo(torch.device("cpu"), steps=steps, samples_per_class=samples_per_class,
                            x0_previews=steps is None)
        result = generate(adapter, root, samples_per_class * len(adapter.class_ids), demo_layers(adapter), seed=0,
                          batch_size=batch_size, run_id=name, progress=progress, on_batch=on_batch)
        run_ids.append(result.run_id)
    if maps:
        precompute_default_maps(root, on_map=on_map)
    if on_ready is not None:
        on_ready(list(run_ids))
    if extras:
        run_ids += build_demo_extras(root, samples_per_class=samples_per_class, batch_size=batch_size,
                                     progress=progress, on_batch=on_extra, maps=maps)
    return run_ids


def build_demo_extras(root: str | Path, *, samples_per_class: int = DEMO_SAMPLES_PER_CLASS, batch_size: int = 100,
                      progress: bool = True, on_batch=None, maps: bool = True) -> list[str]:
    """The demo's runs to compare the generated samples with: real digits (`demo-real`), as many as each
    generated run has samples, the distilled student (`demo-student`), the teacher (`demo-teacher`: EDM's Heun
    sampler, 18 steps, recording only its last step), and the final images of the 1-step runs and the teacher
    encoded at the real digits' noise level (`demo-1step-encoded`, `demo-student-encoded`, `demo-teacher-encoded`:
    a 1-step run's only step is the call on pure noise, so its outputs meet the real digits only this way).
    `on_batch(run_id, done, total)` after each batch.

    Each run is built in a staging store inside `root` (`STAGING`, which readers never look at) and moved in
    whole (`publish_run`), so an app showing the store sees the run appear at once, not batch by batch, and its
    maps are not placed again after every batch. With `maps`, the new samples are then placed into the cached
    default maps (a transform of the existing maps, not a new fit), and the caches of the data before them
    are removed (`Derived.prune`: a map of each lineage's latest data stays)."""
    root = Path(root)
    staging = root / STAGING

    def report(run_id):
        return None if on_batch is None else (lambda done, total: on_batch(run_id, done, total))

    for run_id, build in DEMO_EXTRAS.items():
        where = _build_place(root, staging, run_id)
        build(where, root=root, samples_per_class=samples_per_class, batch_size=batch_size, progress=progress,
              on_batch=report(run_id))
        if where == staging:
            publish_run(staging, root, run_id)
    shutil.rmtree(staging, ignore_errors=True)
    if maps:
        precompute_default_maps(root)
        from store import Store

        Store(root).derived.prune()  # the first maps, of the data before these runs (about 12 MB on the demo)
    return list(DEMO_EXTRAS)


def _build_place(root: Path, staging: Path, run_id: str) -> Path:
    """Where to build `run_id`: in `root` itself when it holds the run already (resumed or extended in place,
    nothing to do when it is whole), else in the staging store."""
    from store import layout

    return root if layout.run_manifest_path(root, run_id).is_file() else staging


def publish_run(staging: str | Path, root: str | Path, run_id: str) -> None:
    """Move the run `run_id` from the store at `staging` into the store at `root`, file by file (each a rename
    within one file system): its activations, images and text embeddings, then its samples parts (the commit
    records, so no reader sees a batch before its activations), then its manifest."""
    from store import layout

    staging, root = Path(staging), Path(root)
    partition = layout.hive("run_id", run_id)
    moves = []
    for top in (layout.ACTIVATIONS, layout.IMAGES, layout.TEXT_EMBEDDINGS, layout.SAMPLES):
        base = staging / top
        if base.is_dir():
            moves += [p for p in sorted(base.rglob("*")) if p.is_file() and partition in p.parts
                      and not layout.is_staging(p.name)]
    manifest = layout.run_manifest_path(staging, run_id)
    moves += [manifest] if manifest.is_file() else []
    for src in moves:
        dst = root / src.relative_to(staging)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)


def add_real_digits(root: str | Path, num_samples: int, *, batch_size: int = 100, progress: bool = True,
                    on_batch=None) -> str:
    """The run `demo-real`: the first `num_samples` of scikit-learn's digits (as the demo model was trained on
    them) through the demo network at the last sigma of its 4-step schedule (0.002), recorded as that step
    (3), so that on the map the app opens on (the last step) real digits lie among the generated ones."""
    from pipeline.adapters.edm import load_demo
    from pipeline.real import encode_real
    from pipeline.sources import open_source

    adapter = load_demo(torch.device("cpu"))
    source = open_source("digits", class_names=adapter.class_names)
    result = encode_real(adapter, source, root, demo_layers(adapter), num_samples=num_samples, seed=0,
                         batch_size=batch_size, run_id=DEMO_REAL_RUN, progress=progress, on_batch=on_batch)
    return result.run_id


def add_encoded_run(root: str | Path, source_run: str, *, into: str | Path | None = None, run_id: str | None = None,
                    batch_size: int = 100, progress: bool = True, on_batch=None) -> str:
    """The run `<source_run>-encoded`: the final images of `source_run` (a run of the demo store at `root`)
    through the demo network as the real digits are (`add_real_digits`: σ = 0.002, recorded as step 3), so that
    a 1-step run's outputs are compared with the real digits at the same noise level. Written into the store at
    `into` (default: `root`)."""
    from pipeline.adapters.edm import load_demo
    from pipeline.real import encode_real
    from pipeline.sources import open_source

    adapter = load_demo(torch.device("cpu"))
    source = open_source(f"run:{source_run}", store=root)
    result = encode_real(adapter, source, root if into is None else into, demo_layers(adapter), seed=0,
                         batch_size=batch_size, run_id=run_id, progress=progress, on_batch=on_batch)
    return result.run_id


def _real_digits_run(where: Path, *, root: Path, samples_per_class: int, batch_size: int, progress: bool,
                     on_batch) -> str:
    return add_real_digits(where, samples_per_class * 10, batch_size=batch_size, progress=progress,
                           on_batch=on_batch)


def _generated(loader: str, run_id: str, **options):
    """A builder of the run `run_id`: the demo network as `pipeline.adapters.edm.<loader>` samples it, with the
    seeds and classes of `demo-1step` (seed 0, the same samples per class), sample by sample; `options` go to
    `generate`."""
    def build(where: Path, *, root: Path, samples_per_class: int, batch_size: int, progress: bool, on_batch) -> str:
        from pipeline.adapters import edm
        from pipeline.generate import generate

        adapter = getattr(edm, loader)(samples_per_class=samples_per_class)
        return generate(adapter, where, samples_per_class * len(adapter.class_ids), demo_layers(adapter), seed=0,
                        batch_size=batch_size, run_id=run_id, progress=progress, on_batch=on_batch,
                        **options).run_id

    return build


# demo-student: the shipped DMD2-distilled 1-step student (train-demo-student), beside the naive 1-step (the
# teacher called once). demo-teacher: EDM's Heun sampler (18 steps, 35 calls), recording only its last step (17:
# the network at sigma 0.002 on the almost final image, the real digits' noise level): all 18 would add about
# 20 MB per step to the store, and maps join runs by step index, so its step 3 (sigma 28) would sit beside the
# 4-step run's (0.002).
_student_run = _generated("demo_student_loader", DEMO_STUDENT_RUN)
_teacher_run = _generated("demo_teacher_loader", DEMO_TEACHER_RUN, record_steps="last")


def _encoded(source_run: str):
    def build(where: Path, *, root: Path, samples_per_class: int, batch_size: int, progress: bool, on_batch) -> str:
        return add_encoded_run(root, source_run, into=where, run_id=DEMO_ENCODED_RUNS[source_run],
                               batch_size=batch_size, progress=progress, on_batch=on_batch)

    return build


DEMO_EXTRAS = {DEMO_REAL_RUN: _real_digits_run, DEMO_STUDENT_RUN: _student_run,
               DEMO_ENCODED_RUNS[DEMO_NAIVE_RUN]: _encoded(DEMO_NAIVE_RUN),
               DEMO_ENCODED_RUNS[DEMO_STUDENT_RUN]: _encoded(DEMO_STUDENT_RUN),
               DEMO_TEACHER_RUN: _teacher_run, DEMO_ENCODED_RUNS[DEMO_TEACHER_RUN]: _encoded(DEMO_TEACHER_RUN)}
"""The runs `build_demo_extras` adds, in order (a run that reads another comes after it; the teacher, the
slowest, after the cheap runs): run id -> builder(store, root=, samples_per_class=, batch_size=, progress=,
on_batch=) that builds that run into the store it is given (resumable), reading the runs it needs from the demo
store `root`."""


def precompute_default_maps(root: str | Path, on_map=None) -> list[str]:
    """Cache the map the app opens on for every layer of the demo model: the step most runs share
    (`pipeline.features.default_step`, the step the app opens on), the app's default projection parameters,
    all runs. Returns their keys. A map that cannot be made (a store too small for the default n_neighbors) is
    left to the app, which says why."""
    from pipeline.features import default_step
    from pipeline.project import ProjectionError, ProjectionParams, default_projector
    from store import Store

    store = Store(root)
    layers = store.layers("demo")
    keys = []
    for i, layer in enumerate(layers):
        if on_map is not None:
            on_map(i, len(layers), layer)
        try:
            step = default_step(store.steps("demo", layer))
            keys.append(default_projector().project(store, "demo", layer, step, ProjectionParams()).key)
        except ProjectionError as exc:
            log.info("no default map of %s: %s", layer, exc)
    return keys
