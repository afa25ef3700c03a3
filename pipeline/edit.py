"""What if: edits of stored samples, written back to the store as samples of a run of kind `edit`.

Four operations, on the generation path that made the parents (the run manifest's model, checkpoint and
sampling settings; each stored sample's seed and condition):

* **regenerate**: a sample with another class label (or prompt) and/or another noise seed;
* **interpolate**: N frames between two samples of one run, the noise by spherical interpolation and the
  condition linearly (class one-hot rows mixed); the end frames are the parents' own inputs, so they equal
  the parents bit for bit;
* **patch** (generate from neighbours): layer L's output at step(s) S replaced by the mean of a set's full
  activations at L, from the sample's noise and condition;
* **steer**: alpha·d added to layer L's output at every step, d = mean(set B) - mean(set A) at that step;
  alpha = 0 reproduces the parent bit for bit.

A set's activations are recomputed by running its samples again (generation is deterministic per sample),
in float32, whatever the store keeps (a mean, a pooled map, or a float16 full map): a pooled map is never
upsampled, and a patch with the sample's own activation is exact. `progress` says when that happens.

Each result is a sample of the run `edit-<parent run>` (kind `edit` in its settings; `-<sha>` appended when
another checkpoint was asked for) that records every layer its parent's run records, with x0 previews for
multi-step models, and its provenance in the `edit_*` columns of the samples table. Its identity,
`edit_key`, is a hash of the edit's inputs: asking for the same edit again returns the stored sample and
adds nothing. Writers of one edit run take a lock on its samples folder, so two processes never pick the
same index.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline.adapters.base import Adapter, EditUnsupported
from pipeline.hooks import Intervention, Recorder, tag

OPERATIONS = ("regenerate", "interpolate", "patch", "steer")
EDIT_KIND = "edit"
EDIT_VERSION = 1  # part of every edit's key: bump when the same inputs would give other images
SET_BATCH = 64  # set samples re-run per batch


class EditError(ValueError):
    """An edit that cannot be done as asked (unknown sample, layer or step, a set mixing models...)."""


@dataclass(frozen=True)
class Parent:
    """A stored sample, with its run's manifest: what an edit starts from."""

    sample_id: str
    run_id: str
    model: str
    seed: int
    class_id: int | None
    prompt: str | None
    label: str | None
    manifest: dict = field(repr=False, compare=False)

    @property
    def settings(self) -> dict:
        return _json(self.manifest.get("settings"))


@dataclass
class _Job:
    """One result to compute: its key, sample row, and the row of the batch that computes it."""

    key: str
    row: dict


def edit_key(op: str, **inputs) -> str:
    """The identity of an edit: a hash of its operation and inputs (ids, layer, steps, alpha, frame...)."""
    text = json.dumps({"op": op, "v": EDIT_VERSION, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def parse_steps(text: str | None) -> list[int] | None:
    """`all` (or None) -> None (every step); 'K,K,...' -> sorted distinct steps."""
    if text is None or text.strip().lower() == "all":
        return None
    try:
        steps = sorted({int(x) for x in text.replace(" ", "").split(",") if x})
    except ValueError:
        raise EditError(f"--steps takes 'all' or comma-separated step numbers, got {text!r}") from None
    if not steps:
        raise EditError(f"--steps takes 'all' or comma-separated step numbers, got {text!r}")
    return steps


class Editor:
    """Runs edits on the samples of the store at `root`.

    `checkpoint`, `base_model` and `device` override what a run manifest says (a checkpoint whose hash
    differs from the run's gives a separate edit run). `progress(message)` hears what takes time.
    """

    def __init__(self, root: str | os.PathLike, *, checkpoint: str | None = None, base_model: str | None = None,
                 device: torch.device | str | None = None, progress: Callable[[str], None] | None = None):
        from pipeline.generate import pick_device
        from store import Store

        self.root = Path(root)
        if not (self.root / "runs").is_dir():
            raise EditError(f"{self.root} is not a store (no runs/ folder)")
        self.store = Store(self.root)
        self.checkpoint = checkpoint
        self.base_model = base_model
        self.device = pick_device(None if device is None else str(device))
        self.progress = progress or (lambda _msg: None)
        self._adapters: dict[str, Adapter] = {}
        self._means: dict[tuple, dict[int, torch.Tensor]] = {}  # (set ids, layer, steps) -> step -> mean

    # -- reading the parents ----------------------------------------------------------------------------
    def parents(self, sample_ids: Sequence[str]) -> list[Parent]:
        """The stored samples `sample_ids`, in that order; EditError names the unknown ones."""
        ids = list(dict.fromkeys(sample_ids))
        if not ids:
            raise EditError("no sample ids given")
        df = self.store.samples(sample_ids=ids, columns=["sample_id", "model", "run_id", "seed", "class_id",
                                                         "prompt", "label", "edit_op"])
        found = {r["sample_id"]: r for r in df.to_dict("records")}
        unknown = [s for s in ids if s not in found]
        if unknown:
            shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
            raise EditError(f"unknown sample{'s' if len(unknown) > 1 else ''} {shown}: not in the store {self.root}")
        # a regenerated sample is its seed and condition again; the others are not
        edited = [(s, op) for s, r in found.items() if (op := _text(r.get("edit_op"))) not in (None, "regenerate")]
        if edited:
            raise EditError(f"sample {edited[0][0]} is the result of an edit ({edited[0][1]}), which its seed and "
                            "label cannot reproduce: edit generated (or regenerated) samples")
        manifests: dict[str, dict] = {}
        out = {}
        for sid, r in found.items():
            run = r["run_id"]
            if run not in manifests:
                manifest = self.store.manifest(run)
                if manifest is None:
                    raise EditError(f"sample {sid}: its run {run!r} has no manifest in {self.root}")
                manifests[run] = manifest
            cid = r.get("class_id")
            out[sid] = Parent(sid, run, r["model"], int(r["seed"]),
                              None if cid is None or cid != cid else int(cid), _text(r.get("prompt")),
                              _text(r.get("label")),
                              manifests[run])
        return [out[s] for s in sample_ids]

    def adapter(self, parent: Parent) -> Adapter:
        """The generator of `parent`'s run, built from its manifest (and the overrides), cached per run."""
        if parent.run_id in self._adapters:
            return self._adapters[parent.run_id]
        from pipeline import families
        from pipeline.adapters import build_adapter
        from pipeline.adapters.edm import SHIPPED_DEMO

        family = families.get_family(parent.model) if parent.model in families.MODELS else None
        if family is None:
            raise EditError(f"sample {parent.sample_id}: model {parent.model!r} is not one this code knows "
                            f"({', '.join(families.MODELS)})")
        if family.conditioning != "class":
            raise EditError(f"edits of the text-to-image models ({parent.model}) are not supported yet: only the "
                            "class-conditional EDM models (demo, imagenet) have them")
        settings = parent.settings
        sigmas = settings.get("sigmas")
        checkpoint = self.checkpoint or parent.manifest.get("checkpoint")
        if checkpoint == SHIPPED_DEMO:
            checkpoint = None
        dtype = getattr(torch, settings.get("dtype") or "float32", torch.float32)
        self.progress(f"loading {parent.model} ({checkpoint or 'shipped weights'}) for run {parent.run_id}")
        try:
            adapter = build_adapter(parent.model, checkpoint=checkpoint, device=self.device,
                                    steps=len(sigmas) if sigmas else None, dtype=dtype,
                                    x0_previews=bool(sigmas) and len(sigmas) > 1)
        except EditUnsupported as exc:
            raise EditError(str(exc)) from None
        ident = adapter.identity()
        got = ident.get("settings", {}).get("sigmas")
        if sigmas is not None and got is not None and not np.allclose(got, sigmas, rtol=1e-6, atol=0):
            raise EditError(f"run {parent.run_id}: cannot rebuild its sampling schedule (sigmas {sigmas}, "
                            f"the loader gives {got})")
        stored_sha = parent.manifest.get("checkpoint_sha256")
        if not self.checkpoint and stored_sha and ident.get("checkpoint_sha256") != stored_sha:
            raise EditError(f"run {parent.run_id}: the checkpoint {checkpoint or '(shipped)'} is not the one it "
                            f"was generated with (sha256 {stored_sha[:12]}...); give --checkpoint")
        self._adapters[parent.run_id] = adapter
        return adapter

    def _inputs(self, parents: Sequence[Parent], adapter: Adapter, *, seeds=None, conditions=None) -> dict:
        seeds = [p.seed for p in parents] if seeds is None else seeds
        conds = [adapter.condition(class_id=p.class_id, prompt=p.prompt) for p in parents] \
            if conditions is None else conditions
        return adapter.edit_inputs(seeds, conds)

    def _check_layer(self, adapter: Adapter, layer: str) -> dict[str, str]:
        return adapter.resolve_layers([layer])

    def _check_steps(self, parent: Parent, adapter: Adapter, steps: Sequence[int] | None) -> list[int]:
        n = int(getattr(adapter, "num_steps", 1))
        if steps is None:
            return list(range(n))
        bad = [s for s in steps if not 0 <= int(s) < n]
        if bad:
            raise EditError(f"step{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} not in run "
                            f"{parent.run_id}: model {parent.model} samples it in {n} step{'s' if n > 1 else ''} "
                            f"(0..{n - 1})")
        return sorted({int(s) for s in steps})

    def _set(self, parent: Parent, ids: Sequence[str], what: str) -> list[Parent]:
        members = self.parents(ids)
        models = sorted({m.model for m in members} | {parent.model})
        if len(models) > 1:
            counts = {m: sum(1 for x in members if x.model == m) for m in models}
            raise EditError(f"the {what} mixes models: " + ", ".join(f"{m} ({n} sample{'s' if n != 1 else ''})"
                                                                     for m, n in counts.items())
                            + f"; it must hold samples of the parent's model, {parent.model}")
        return members

    def set_activations(self, members: Sequence[Parent], layer: str, steps: Sequence[int],
                        what: str = "set") -> dict[int, torch.Tensor]:
        """Step -> the mean over `members` of layer `layer`'s full output (float32, (C, H, W)), recomputed by
        running the members again from their stored seeds and conditions (kept for the next edit with it)."""
        memo = (tuple(sorted({m.sample_id for m in members})), layer, tuple(steps))
        if memo not in self._means:
            self._means[memo] = self._set_means(members, layer, steps, what)
        return self._means[memo]

    def _set_means(self, members: Sequence[Parent], layer: str, steps: Sequence[int],
                   what: str) -> dict[int, torch.Tensor]:
        by_run: dict[str, list[Parent]] = {}
        for m in members:
            by_run.setdefault(m.run_id, []).append(m)
        stored = {run: _json(ms[0].manifest.get("reduce")).get(layer) for run, ms in by_run.items()}
        kept = ", ".join(sorted({str(v) if v else "not stored" for v in stored.values()}))
        self.progress(f"{what}: recomputing the full activations of {len(members)} sample"
                      f"{'s' if len(members) != 1 else ''} at {layer} (the store keeps {kept}, float16)")
        sums: dict[int, torch.Tensor] = {}
        for run, ms in by_run.items():
            adapter = self.adapter(ms[0])
            n = int(getattr(adapter, "num_steps", 1))
            missing = [s for s in steps if s >= n]
            if missing:
                raise EditError(f"the {what} holds samples of run {run}, sampled in {n} step{'s' if n > 1 else ''}: "
                                f"it has no step {', '.join(map(str, missing))}")
            paths = self._check_layer(adapter, layer)
            for lo in range(0, len(ms), SET_BATCH):
                chunk = ms[lo:lo + SET_BATCH]
                captured: dict[int, torch.Tensor] = {}

                def keep(step, out, captured=captured):
                    if step in steps:
                        captured[step] = out.detach().to("cpu", torch.float32).sum(dim=0)

                with Intervention(adapter.root, paths, {layer: keep}) as grab:
                    adapter.sample_inputs(self._inputs(chunk, adapter), grab)
                for s, v in captured.items():
                    sums[s] = v if s not in sums else sums[s] + v
        return {s: v / len(members) for s, v in sums.items()}

    # -- the operations ---------------------------------------------------------------------------------
    def regenerate(self, sample_id: str, *, label: int | None = None, prompt: str | None = None,
                   seed: int | None = None) -> list[str]:
        """The sample with another class label (or prompt) and/or noise seed; one result id."""
        (parent,) = self.parents([sample_id])
        adapter = self.adapter(parent)
        if prompt is not None:
            raise EditError(f"model {parent.model} is conditioned on a class label, not a prompt: use --label")
        cid = parent.class_id if label is None else int(label)
        cond = adapter.condition(class_id=cid)
        new_seed = parent.seed if seed is None else int(seed)
        changes = []
        if cid != parent.class_id:
            changes.append(f"label {parent.class_id} -> {cid}")
        if new_seed != parent.seed:
            changes.append(f"seed {parent.seed} -> {new_seed}")
        key = edit_key("regenerate", parent=sample_id, class_id=cid, seed=new_seed, ckpt=self._ckpt(adapter))
        job = _Job(key, dict(seed=new_seed, condition=cond, edit_op="regenerate", edit_parents=sample_id,
                             edit_change="; ".join(changes) or "nothing (the parent again)"))

        def compute(jobs, recorder):
            inputs = adapter.edit_inputs([new_seed] * len(jobs), [cond] * len(jobs))
            return adapter.sample_inputs(inputs, recorder)

        return self._run(parent, adapter, [job], compute)

    def interpolate(self, from_id: str, to_id: str, frames: int = 8) -> list[str]:
        """`frames` samples from one parent to the other (both ends included: they equal the parents)."""
        if int(frames) < 2:
            raise EditError(f"--frames must be at least 2 (the two ends), got {frames}")
        a, b = self.parents([from_id, to_id])
        if a.run_id != b.run_id:
            raise EditError(f"interpolate needs two samples of one run: {from_id} is in run {a.run_id}, "
                            f"{to_id} in run {b.run_id}")
        adapter = self.adapter(a)
        ia, ib = self._inputs([a], adapter), self._inputs([b], adapter)
        ts = [k / (frames - 1) for k in range(frames)]
        jobs = []
        for k, t in enumerate(ts):
            near = a if t <= 0.5 else b
            change = f"t = {t:.4g} from {a.label} to {b.label}"
            jobs.append(_Job(edit_key("interpolate", parents=[from_id, to_id], frame=k, frames=frames,
                                      ckpt=self._ckpt(adapter)),
                             dict(seed=near.seed, condition=adapter.condition(class_id=near.class_id,
                                                                              prompt=near.prompt),
                                  edit_op="interpolate", edit_parents=f"{from_id},{to_id}", edit_frame=k,
                                  edit_change=change, t=t)))

        def compute(todo, recorder):
            mixed = [adapter.mix_inputs(ia, ib, j.row["t"]) for j in todo]
            inputs = {k: torch.cat([m[k] for m in mixed]) for k in mixed[0]}
            return adapter.sample_inputs(inputs, recorder)

        return self._run(a, adapter, jobs, compute)

    def patch(self, sample_id: str, layer: str, set_ids: Sequence[str], steps: Sequence[int] | None = None) -> list[str]:
        """The sample with `layer`'s output at `steps` (None: all) replaced by the set's mean activation."""
        (parent,) = self.parents([sample_id])
        adapter = self.adapter(parent)
        paths = self._check_layer(adapter, layer)
        steps = self._check_steps(parent, adapter, steps)
        members = self._set(parent, set_ids, "set")
        ids = [m.sample_id for m in members]
        key = edit_key("patch", parent=sample_id, layer=layer, steps=steps, set=sorted(set(ids)),
                       ckpt=self._ckpt(adapter))
        job = _Job(key, dict(seed=parent.seed, condition=adapter.condition(class_id=parent.class_id,
                                                                           prompt=parent.prompt),
                             edit_op="patch", edit_parents=sample_id, edit_layer=layer,
                             edit_steps=",".join(map(str, steps)), edit_set=",".join(ids)))
        means: dict[int, torch.Tensor] = {}

        def prepare(_todo):
            means.update(self.set_activations(members, layer, steps))

        def replace(step, out):
            if step not in means:
                return None
            return means[step].to(out.device, out.dtype).expand_as(out).contiguous()

        def compute(todo, recorder):
            with Intervention(adapter.root, paths, {layer: replace}) as edit:
                return adapter.sample_inputs(self._inputs([parent] * len(todo), adapter), tag(edit, recorder))

        return self._run(parent, adapter, [job], compute, prepare)

    def steer(self, sample_id: str, layer: str, from_ids: Sequence[str], to_ids: Sequence[str],
              alphas: Sequence[float], steps: Sequence[int] | None = None) -> list[str]:
        """One result per alpha (in the order given): `layer`'s output + alpha·(mean(to) - mean(from))."""
        if not alphas:
            raise EditError("give at least one alpha")
        (parent,) = self.parents([sample_id])
        adapter = self.adapter(parent)
        paths = self._check_layer(adapter, layer)
        steps = self._check_steps(parent, adapter, steps)
        set_a, set_b = self._set(parent, from_ids, "from-set"), self._set(parent, to_ids, "to-set")
        ids_a, ids_b = [m.sample_id for m in set_a], [m.sample_id for m in set_b]
        base = dict(parent=sample_id, layer=layer, steps=steps, a=sorted(set(ids_a)), b=sorted(set(ids_b)),
                    ckpt=self._ckpt(adapter))
        cond = adapter.condition(class_id=parent.class_id, prompt=parent.prompt)
        jobs = [_Job(edit_key("steer", alpha=float(al), **base),
                     dict(seed=parent.seed, condition=cond, edit_op="steer", edit_parents=sample_id,
                          edit_layer=layer, edit_steps=",".join(map(str, steps)), edit_set=",".join(ids_b),
                          edit_from_set=",".join(ids_a), edit_alpha=float(al)))
                for al in alphas]
        direction: dict[int, torch.Tensor] = {}

        def prepare(_todo):
            mean_a = self.set_activations(set_a, layer, steps, "from-set")
            mean_b = self.set_activations(set_b, layer, steps, "to-set")
            direction.update({s: mean_b[s] - mean_a[s] for s in steps})

        def compute(todo, recorder):
            alpha = torch.tensor([j.row["edit_alpha"] for j in todo], dtype=torch.float32)

            def add(step, out):
                if step not in direction:
                    return None
                scale = alpha.to(out.device).reshape(-1, *([1] * (out.ndim - 1)))
                # alpha = 0 adds nothing at all (not even -0.0 rounding): the parent bit for bit
                return torch.where(scale == 0, out, out + scale * direction[step].to(out.device, out.dtype))

            with Intervention(adapter.root, paths, {layer: add}) as edit:
                return adapter.sample_inputs(self._inputs([parent] * len(todo), adapter), tag(edit, recorder))

        return self._run(parent, adapter, jobs, compute, prepare)

    # -- writing ----------------------------------------------------------------------------------------
    def _ckpt(self, adapter: Adapter) -> str | None:
        return adapter.identity().get("checkpoint_sha256")

    def edit_run_id(self, parent: Parent, adapter: Adapter) -> str:
        sha = self._ckpt(adapter)
        run_id = f"{EDIT_KIND}-{parent.run_id}"
        if sha and sha != parent.manifest.get("checkpoint_sha256"):
            run_id += f"-{sha[:8]}"
        return run_id

    def _run(self, parent: Parent, adapter: Adapter, jobs: list[_Job], compute, prepare=None) -> list[str]:
        """Compute the jobs whose key the edit run lacks, write them as one batch; the ids of all jobs."""
        from store import RunWriter, layout

        run_id = self.edit_run_id(parent, adapter)
        have = _stored_keys(self.root, parent.model, run_id)
        todo = list({j.key: j for j in jobs if j.key not in have}.values())
        if todo:
            if prepare is not None:
                prepare(todo)
            layers = list(parent.manifest.get("layers") or [])
            reduce = _json(parent.manifest.get("reduce"))
            self.progress(f"{jobs[0].row['edit_op']}: generating {len(todo)} sample{'s' if len(todo) > 1 else ''}")
            with Recorder(adapter.root, adapter.resolve_layers(layers), reduce) as recorder:
                images = compute(todo, recorder)
                activations = recorder.pop()
            previews = getattr(adapter, "last_previews", None)
            ident = adapter.identity()
            settings = {**parent.settings, "kind": EDIT_KIND, "parent_run": parent.run_id}
            manifest = {"run_id": run_id, "model": parent.model, "family": adapter.family,
                        "checkpoint": ident.get("checkpoint"), "checkpoint_sha256": ident.get("checkpoint_sha256"),
                        "base_model": ident.get("base_model"), "layers": layers, "reduce": reduce,
                        "settings": settings, "seed": int(parent.manifest.get("seed") or 0),
                        "device": str(self.device)}
            folder = layout.samples_dir(self.root, parent.model, run_id)
            folder.mkdir(parents=True, exist_ok=True)
            with _locked(folder):
                writer = RunWriter(self.root, manifest, durable=False)
                with writer:
                    have = _stored_keys(self.root, parent.model, run_id)  # another process may have written
                    fresh = [k for k, j in enumerate(todo) if j.key not in have]
                    if fresh:
                        start = int(writer.done_indices().max()) + 1 if len(writer.done_indices()) else 0
                        rows = [_sample_row(todo[k], adapter) for k in fresh]
                        writer.write_batch(
                            np.arange(start, start + len(fresh)), rows, [images[k] for k in fresh],
                            {layer: [{**e, "array": e["array"][fresh]} for e in entries]
                             for layer, entries in activations.items()},
                            {s: [v[k] for k in fresh] for s, v in previews.items()} if previews else None)
                        for n, k in enumerate(fresh):
                            have[todo[k].key] = layout.sample_id(run_id, start + n)
            self.store = type(self.store)(self.root)  # the next read sees the new parts
        return [have[j.key] for j in jobs]


def _json(value) -> dict:
    """A manifest's JSON field (a string, or already a dict) as a dict."""
    if not value:
        return {}
    return json.loads(value) if isinstance(value, str | bytes) else dict(value)


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _sample_row(job: _Job, adapter: Adapter) -> dict:
    from pipeline.generate import _sample_row as generated_row

    row = {k: v for k, v in job.row.items() if k.startswith("edit_")}
    return {**generated_row(job.row["seed"], job.row["condition"], adapter), **row, "edit_key": job.key}


def _stored_keys(root: Path, model: str, run_id: str) -> dict[str, str]:
    """edit_key -> sample_id of the committed samples of an edit run (read from its parts, no cache)."""
    from store import layout

    out: dict[str, str] = {}
    for part in layout.list_parts(layout.samples_dir(root, model, run_id)):
        try:
            t = pq.read_table(part, columns=["sample_id", "edit_key"])
        except Exception:  # noqa: BLE001 - a damaged commit record: its batch is not done
            continue
        for sid, key in zip(t["sample_id"].to_pylist(), t["edit_key"].to_pylist(), strict=True):
            if key is not None:
                out.setdefault(key, sid)
    return out


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive advisory lock on `folder` (flock on its descriptor) for the writers of one edit run."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
