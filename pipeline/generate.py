"""Batched generation that streams images, activations and metadata into the store, with resume.

Sample i's noise and condition depend only on (run seed, i); the run id depends only on what makes samples
comparable (model, checkpoint, seed, sampling settings, layers, reductions), not on how many were asked for.
So rerunning a command with a larger `--num-samples`, or after a kill, generates exactly what is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.adapters.base import Adapter, sample_seed
from pipeline.hooks import Recorder, resolve_reduce
from store import RunWriter

log = logging.getLogger(__name__)


def pick_device(name: str | None = None) -> torch.device:
    """CUDA, then Apple MPS, then CPU, unless the user names one."""
    if name and name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_store_folder(root: str | Path) -> Path:
    """`root` as a Path, or ValueError when it cannot be a store folder: it, or a folder above it, is a file,
    or the nearest existing folder is not writable (read-only file system, no permission). Nothing is
    written."""
    root = Path(root)
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == root else f"is under {existing}, which is a file"
        raise ValueError(f"store path {root} {where}: give a folder (it is created if missing)")
    if existing.is_dir() and not os.access(existing, os.W_OK):
        why = "a read-only file system" if _read_only_fs(existing) else "a folder this user may not write"
        raise ValueError(f"store path {root} is not writable: {existing} is on {why}")
    return root


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def resolve_record_steps(steps, num_steps: int) -> list[int] | None:
    """The steps a run records, as sorted step indices, or None for all of them (also when `steps` names
    every step). `steps`: None or "all"; "last"; an int or a sequence of ints and "last" (or a comma-separated
    string of them), negative ones counting back from the last step (-1: the last). ValueError for a step
    outside 0..num_steps-1 or a word it does not know."""
    n = int(num_steps)
    if steps is None or (isinstance(steps, str) and steps.strip().lower() in ("", "all")):
        return None
    items = steps.split(",") if isinstance(steps, str) else [steps] if isinstance(steps, numbers.Integral) \
        else list(steps)
    out = set()
    for item in items:
        text = str(item).strip().lower()
        if not text:  # "0,3," or ","
            continue
        if text == "last":
            out.add(n - 1)
            continue
        try:
            k = int(text)
        except ValueError:
            raise ValueError(f"record steps: {item!r} is not a step; give all, last, or step numbers "
                             f"such as 0,3 (negative ones count back from the last)") from None
        if not -n <= k < n:
            raise ValueError(f"record steps: step {k} out of range: this model samples in {n} step"
                             f"{'s' if n != 1 else ''} (0..{n - 1}, or -1..-{n} from the last)")
        out.add(k % n)
    if not out:
        raise ValueError("record steps: no step given; give all, last, or step numbers such as 0,3")
    return None if len(out) == n else sorted(out)


def default_run_id(adapter: Adapter, seed: int, layers: dict[str, str], reduce: dict[str, str],
                   record_steps: list[int] | None = None) -> str:
    """`<model>-s<seed>-<hash of what makes samples comparable>`; `<model>` is the registry family that built
    the adapter (`demo-teacher` for a teacher run stored under `demo`). Recording only some steps
    (`record_steps`) gives another id; recording all of them keeps the id of runs written before steps could be
    chosen."""
    ident = adapter.identity()
    what = {"id": ident, "seed": seed, "layers": sorted(layers), "reduce": reduce}
    if record_steps is not None:
        what["record_steps"] = list(record_steps)
    key = json.dumps(what, sort_keys=True, default=str)
    prefix = getattr(adapter, "run_prefix", None) or adapter.name
    return f"{prefix}-s{seed}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


_STEP_IN_NAME = re.compile(r"(?:^|[^a-z0-9])(?:step|checkpoint_model|checkpoint|ckpt|iter)[_-]?(\d+)(?!\d)",
                           re.IGNORECASE)


def checkpoint_step_of(checkpoint: str | os.PathLike | None) -> int | None:
    """The training step a checkpoint names, or None: a safetensors file's metadata `step` (train-demo's
    snapshots write it), else the last step-like number of its path's last two parts: `demo-step00500.safetensors`,
    DMD2's run folders `..._checkpoint_model_548000`, `checkpoint-2000/`, `ckpt_1000.pt`, `iter_300`."""
    if not checkpoint:
        return None
    text = os.fspath(checkpoint)
    path = Path(text)
    if path.suffix == ".safetensors" and path.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                step = (f.metadata() or {}).get("step")
            if step is not None and str(step).isdigit():
                return int(step)
        except Exception:  # noqa: BLE001 - unreadable metadata: fall back to the name
            pass
    parts = [p for p in re.split(r"[/\\]", text.removeprefix("hf://")) if p][-2:]
    for part in reversed(parts):
        found = _STEP_IN_NAME.findall(part)
        if found:
            return int(found[-1])
    return None


def _checkpoint_step_setting(root, run_id: str, checkpoint, given: int | None) -> dict:
    """{"checkpoint_step": N} for the manifest's settings: `given`, else what the checkpoint's name or metadata
    says. An inferred step is left out when resuming a run written before steps were recorded (its settings
    would no longer match); a given one is always recorded (a different one than the run's is an error)."""
    if given is not None:
        if isinstance(given, bool) or int(given) != given or given < 0:
            raise ValueError(f"checkpoint_step must be an integer, 0 or more, got {given!r}")
        return {"checkpoint_step": int(given)}
    step = checkpoint_step_of(checkpoint)
    if step is None:
        return {}
    from store import layout
    from store.writer import read_manifest

    try:
        old = read_manifest(layout.run_manifest_path(Path(root), run_id))
    except (OSError, ValueError):
        old = None
    if old is not None:
        settings = old.get("settings")
        settings = json.loads(settings) if isinstance(settings, str) else settings or {}
        if "checkpoint_step" not in settings:
            return {}
    return {"checkpoint_step": step}


@dataclass
class GenerateResult:
    run_id: str
    generated: int
    total_done: int
    seconds: float

    @property
    def samples_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0


def _batches(todo: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split the missing indices into batches of consecutive indices, at most `batch_size` long."""
    if len(todo) == 0:
        return []
    breaks = np.flatnonzero(np.diff(todo) != 1) + 1
    out = []
    for run in np.split(todo, breaks):
        out.extend(run[i:i + batch_size] for i in range(0, len(run), batch_size))
    return out


def _distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun, with the process group started; (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def generate(adapter: Adapter, store_root: str | Path, num_samples: int, layers: list[str], *,
             seed: int = 0, batch_size: int = 16, reduce: str | dict[str, str] = "auto",
             run_id: str | None = None, progress: bool = True, settings: dict | None = None,
             on_batch=None, fsync: bool = False, checkpoint_step: int | None = None,
             record_steps=None) -> GenerateResult:
    """Generate samples 0..num_samples-1 of a run, skipping those already committed to the store.

    `on_batch(done, total)` is called after each committed batch (the app's progress bar). Files are always
    written atomically (a killed run leaves nothing half-visible); `fsync=True` also makes each batch
    survive a power cut, at the price of one fsync per file (about half the demo model's generation time).

    `checkpoint_step` (the training step of the adapter's checkpoint; default: `checkpoint_step_of` its
    checkpoint) goes into the manifest's settings as `checkpoint_step`, which orders the runs of several
    checkpoints of one model (`store.Store.runs()`'s `checkpoint_step` column).

    `record_steps` (see `resolve_record_steps`; None: all) chooses the sampling steps whose activations are
    stored; the others leave no trace (x0 previews are kept for every step). When not all, the resolved list
    goes into the manifest's settings as `record_steps`, which edits of the run's samples record too.

    Bad arguments (a sample count or batch size below 1, a store path that is a file) raise ValueError
    before anything is written. An error once the run has started (a full disk, say) leaves its manifest
    `interrupted`, and rerunning resumes from the last whole batch."""
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if int(seed) < 0:
        raise ValueError(f"seed must be 0 or more, got {seed!r}")
    num_samples, batch_size = int(num_samples), int(batch_size)
    check_store_folder(store_root)
    rank, world = _distributed()
    paths = adapter.resolve_layers(layers)
    shapes = adapter.layer_shapes()
    wanted = reduce if isinstance(reduce, dict) else {name: reduce for name in paths}
    reductions = {name: resolve_reduce(wanted.get(name, "auto"), shapes[name]) for name in paths}
    ident = adapter.identity()
    recorded = resolve_record_steps(record_steps, getattr(adapter, "num_steps", 1))
    run_id = run_id or default_run_id(adapter, seed, paths, reductions, recorded)
    step_setting = _checkpoint_step_setting(store_root, run_id, ident.get("checkpoint"), checkpoint_step)
    device = next(adapter.root.parameters()).device
    manifest = {
        "run_id": run_id, "model": adapter.name, "family": adapter.family,
        "checkpoint": ident.get("checkpoint"), "checkpoint_sha256": ident.get("checkpoint_sha256"),
        "base_model": ident.get("base_model"), "layers": list(paths), "reduce": reductions,
        # settings decide what a sample is; the batch size does not, so a resume may change it
        "settings": {**ident.get("settings", {}), **step_setting, **(settings or {}), "layer_paths": paths,
                     "layer_shapes": {k: list(shapes[k]) for k in paths},
                     **({} if recorded is None else {"record_steps": recorded})},
        "seed": seed, "num_samples": num_samples,  # the writer records the code version
        "device": str(device),
    }
    writer = RunWriter(store_root, manifest, rank=rank, world_size=world, durable=fsync)
    start = time.perf_counter()
    status = "interrupted"
    try:
        if world > 1:
            if rank == 0:
                writer.cleanup()
            _barrier(world)
        if rank == 0:
            texts = adapter.text_embeddings()
            if texts is not None:
                writer.write_text_embeddings(texts)

        done = set(writer.done_indices().tolist())
        todo = np.array([i for i in range(num_samples) if i not in done], dtype=np.int64)
        mine = _batches(todo, batch_size)[rank::world]
        total = int(sum(len(b) for b in mine))
        # on an accelerator the device computes the next batch while this one is written; on a CPU a
        # writer thread would only compete with generation for the same cores
        with Recorder(adapter.root, paths, reductions, recorded) as recorder, \
                BackgroundWriter(writer, threaded=device.type != "cpu") as background, \
                tqdm(total=total, unit="sample", disable=not progress, desc=f"{run_id} [rank {rank}]"
                     if world > 1 else run_id, dynamic_ncols=True) as bar:

            def report():
                done = background.committed  # not bar.n: a disabled bar (progress=False) never counts
                bar.update(done - bar.n)
                elapsed = time.perf_counter() - start
                bar.set_postfix_str(f"{done / elapsed:.1f} samples/s" if elapsed > 0 else "")
                if on_batch is not None:
                    on_batch(done, total)

            for indices in mine:
                conditions = adapter.conditions(indices, seed)
                seeds = [sample_seed(seed, int(i)) for i in indices]
                images = adapter.sample(seeds, conditions, recorder)
                activations = recorder.pop()
                # step -> (B, H, W, 3) x0 images when the adapter was built with x0_previews, else None
                previews = getattr(adapter, "last_previews", None)
                rows = [_sample_row(s, c, adapter) for s, c in zip(seeds, conditions, strict=True)]
                background.write_batch(indices, rows, list(images), activations, previews)
                report()
            background.close()
            report()
        status = "complete"
    finally:
        if status == "complete":
            _barrier(world)
        if rank == 0:
            try:
                writer.finish(status)
            except OSError as exc:  # e.g. the disk is still full: keep the error that stopped the run
                if status == "complete":
                    raise
                log.warning("run %s: could not record its status %r: %s", run_id, status, exc)
    seconds = time.perf_counter() - start
    return GenerateResult(run_id, total, len(done) + total if world == 1 else len(writer.done_indices()),
                          seconds)


class BackgroundWriter:
    """Writes batches on one thread, in order, so the device computes batch k+1 while batch k is encoded
    (PNG, WebP, Parquet) and written; with `threaded=False`, in the caller's thread. At most `depth`
    batches wait; a write error stops generation. A killed process loses only queued batches, which a
    resume regenerates."""

    def __init__(self, writer: RunWriter, depth: int = 2, threaded: bool = True):
        self.writer = writer
        self.committed = 0
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        if threaded:
            self._thread.start()

    def _commit(self, args) -> None:
        self.writer.write_batch(*args)
        self.committed += len(args[0])

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._commit(item)
                except BaseException as exc:  # noqa: BLE001 - handed to the generating thread
                    self._error = exc

    def write_batch(self, *args) -> None:
        self._raise()
        if self._thread.is_alive():
            self._queue.put(args)
        else:  # synchronous
            self._commit(args)

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def close(self) -> None:
        """Wait for every queued batch, then raise the first write error, if any."""
        self._stop()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._stop()


def _sample_row(seed: int, cond, adapter: Adapter) -> dict:
    """The sample's metadata; the writer adds sample_id, run_id, index, image path and thumbnail."""
    return {
        "seed": seed, "class_id": cond.class_id, "class_name": cond.class_name, "prompt": cond.prompt,
        "prompt_index": cond.prompt_index, "category": cond.category, "label": cond.label,
        "num_steps": getattr(adapter, "num_steps", 1),
    }
