"""What if: edits of stored samples, written back to the store as samples of a run of kind `edit`.

Four operations, on the generation path that made the parents (the run manifest's model, checkpoint and
sampling settings; each stored sample's seed and condition), for every model family:

* **regenerate**: a sample with another class label (class models) or prompt (text-to-image models) and/or
  another noise seed; `regenerate_many` does several in one forward batch and one write;
* **interpolate**: N frames between two samples of one run, the noise by spherical interpolation and the
  condition linearly (class one-hot rows, or the text encoders' outputs and pooled embeddings, mixed); the
  end frames are the parents' own inputs, so they equal the parents bit for bit;
* **patch** (generate from neighbours): layer L's output at step(s) S replaced by the mean of a set's full
  activations at L, from the sample's noise and condition;
* **steer**: alpha·d added to layer L's output at every step, d = mean(set B) - mean(set A) at that step;
  alpha = 0 reproduces the parent bit for bit.

A set's activations are recomputed by running its samples again (generation is deterministic per sample),
in float32, whatever the store keeps (a mean, a pooled map, or a float16 full map): a pooled map is never
upsampled, and a patch with the sample's own activation is exact. `progress` says when that happens. The
sets of one edit are recomputed in one batch, and an Editor keeps their means for its next edits.

Each result is a sample of the run `edit-<parent run>` (kind `edit` in its settings; `-<sha>` appended when
another checkpoint was asked for) that records every layer its parent's run records, with x0 previews for
multi-step models, and its provenance in the `edit_*` columns of the samples table. Its identity,
`edit_key`, is a hash of the edit's inputs: asking for the same edit again returns the stored sample and
adds nothing. Writers of one edit run take a lock on its samples folder, so two processes never pick the
same index.

Generators come from a `GeneratorCache`: the app shares one across its sessions (a generator loads once per
process), and each use of a generator (hooks registered, then sampling) holds that generator's lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline.adapters.base import Adapter, EditUnsupported
from pipeline.hooks import Intervention, Recorder, tag

OPERATIONS = ("regenerate", "interpolate", "patch", "steer")
EDIT_KIND = "edit"
ENCODED_KINDS = ("real", "encoded")  # runs of images encoded by the network (encode-real): not made from their seed
EDIT_VERSION = 1  # part of every edit's key: bump when the same inputs would give other images
SET_BATCH = 64  # set samples re-run per batch
_PARENT_COLUMNS = ("sample_id", "index", "seed", "class_id", "prompt", "prompt_index", "category", "label",
                   "edit_op")


class EditError(ValueError):
    """An edit that cannot be done as asked (unknown sample, layer or step, a set mixing models...)."""


class GeneratorCache:
    """Loaded generators shared by every Editor (and app session) of a process, thread-safe.

    `get_or_load(key, load)` calls `load()` once per key, even when several threads ask at once (the others
    wait for it; a load that fails is tried again by the next caller). `lock(key)` is that generator's
    `threading.RLock`: hooks are registered on the shared torch module, so whoever registers hooks and
    samples through a generator holds its lock for that time.
    """

    def __init__(self):
        self._guard = threading.Lock()
        self._loaded: dict[tuple, Adapter] = {}
        self._loading: dict[tuple, threading.Lock] = {}
        self._locks: dict[tuple, threading.RLock] = {}

    def get_or_load(self, key: tuple, load: Callable[[], Adapter]) -> Adapter:
        with self._guard:
            if key in self._loaded:
                return self._loaded[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._guard:
                if key in self._loaded:
                    return self._loaded[key]
            adapter = load()
            with self._guard:
                self._loaded[key] = adapter
                self._loading.pop(key, None)
            return adapter

    def lock(self, key: tuple) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(key, threading.RLock())

    def __contains__(self, key) -> bool:
        with self._guard:
            return key in self._loaded

    def __len__(self) -> int:
        with self._guard:
            return len(self._loaded)

    def keys(self) -> list[tuple]:
        with self._guard:
            return list(self._loaded)

    def drop(self, key: tuple) -> None:
        """Forget a loaded generator (its memory goes when no Editor holds it any more)."""
        with self._guard:
            self._loaded.pop(key, None)


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
    prompt_index: int | None = None
    category: str | None = None

    @property
    def settings(self) -> dict:
        return _json(self.manifest.get("settings"))


@dataclass(frozen=True)
class GeneratorSource:
    """What defines a loaded generator: two runs (or sessions) with the same source share one module."""

    model: str  # the registry family that builds it: a teacher's (demo-teacher), not the store key it is under
    checkpoint: str | None  # None: the shipped demo weights
    checkpoint_sha256: str | None  # the hash the run recorded (None when --checkpoint overrides it)
    base_model: str | None  # text-to-image models
    device: str
    dtype: str
    steps: int | None
    x0_previews: bool
    resolution: int | None  # text-to-image models
    options: tuple = ()  # (name, value) of the family's own sampling settings: EDM churn, guidance

    @property
    def key(self) -> tuple:
        return dataclasses.astuple(self)

    def describe(self) -> str:
        """e.g. 'sdxl-4step from hf://tianweiy/DMD2/... (base stabilityai/...) on cuda, float16'."""
        base = f" (base {self.base_model})" if self.base_model else ""
        return f"{self.model} from {self.checkpoint or 'its shipped weights'}{base} on {self.device}, {self.dtype}"


@dataclass(frozen=True)
class Regeneration:
    """One request of `Editor.regenerate_many`: a sample, and what changes (None: as it was)."""

    sample_id: str
    label: int | None = None
    prompt: str | None = None
    seed: int | None = None


@dataclass
class _Job:
    """One result to compute: its key and its sample row (seed, condition, edit_* columns, ...)."""

    key: str
    row: dict


def edit_key(op: str, **inputs) -> str:
    """The identity of an edit: a hash of its operation and inputs (ids, layer, steps, alpha, frame...)."""
    text = json.dumps({"op": op, "v": EDIT_VERSION, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def refusal(sample_id: str, run_id: str, kind: str | None, edit_op: str | None,
            edit_parents: str | None = None) -> str | None:
    """Why a stored sample cannot be an edit's parent or set member, or None: an image run through the network
    (a `real` or `encoded` run) or an edit's result (but a regenerated sample, which is its seed and condition
    again) is not what its seed makes. The Editor raises it; the app shows it before anything loads."""
    if kind in ENCODED_KINDS:
        return (f"sample {sample_id} is an image run through the network (run {run_id}, kind {kind}), not generated "
                "from its seed: edits start from (and sets are recomputed from) generated samples")
    if edit_op not in (None, "regenerate"):
        parents = f" (its parents: {edit_parents})" if edit_parents else ""
        return (f"sample {sample_id} is the result of an edit ({edit_op}), which its seed and label cannot "
                f"reproduce: edit generated (or regenerated) samples{parents}")
    return None


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


class _SetMeans:
    """The means of an edit's sets at one layer, step by step: kept from an earlier edit, recomputed before the
    edit (`prepare`), or, when every member is of the parent's run and the batch stays small, computed in the
    edit's own batch: the members' rows ride along after the edit's rows (nothing changes them), and the hook
    takes their means at each step before it edits the other rows. One forward pass instead of two."""

    def __init__(self, editor: Editor, parent: Parent, sets, layer: str, steps: list[int], edit_rows: int):
        self.editor, self.sets, self.layer, self.steps = editor, list(sets), layer, list(steps)
        self.memos = [editor._memo(ms, layer, steps) for ms, _ in self.sets]
        self.means: list[dict[int, torch.Tensor]] | None = None
        self.members: list[Parent] = []  # rows appended to the edit's batch (fused)
        if all(m in editor._means for m in self.memos):
            self.means = [editor._means[m] for m in self.memos]
            return
        members = {m.sample_id: m for ms, _ in self.sets for m in ms}
        if all(m.run_id == parent.run_id for m in members.values()) and len(members) + edit_rows <= SET_BATCH:
            self.members = list(members.values())
            self.weights = torch.zeros(len(self.sets), len(self.members))
            at = {sid: k for k, sid in enumerate(members)}
            for j, (ms, _what) in enumerate(self.sets):
                distinct = {m.sample_id for m in ms}
                for sid in distinct:
                    self.weights[j, at[sid]] = 1.0 / len(distinct)
            self._captured: dict[int, torch.Tensor] = {}

    def prepare(self) -> None:
        """Before the edit: recompute the sets that the edit's batch will not (or say that it will)."""
        if self.means is None and not self.members:
            self.means = self.editor.sets_activations(self.sets, self.layer, self.steps)
        elif self.members:
            self.editor._say_recomputing(self.sets, self.layer, ", in the edit's batch")

    def at(self, step: int, out: torch.Tensor, n: int) -> list[torch.Tensor]:
        """Each set's mean at `step`; `out` is the layer's output for the whole batch, the first n the edit's."""
        if not self.members:
            return [m[step] for m in self.means]
        rows = out[n:].detach().to("cpu", torch.float32)
        means = torch.tensordot(self.weights, rows, dims=([1], [0]))  # (sets, C, H, W)
        self._captured[step] = means
        return list(means)

    def finish(self) -> None:
        """After the edit's batch: keep the means it took, for the Editor's next edits with these sets."""
        if self.members and self.means is None:
            self.means = [{s: v[j] for s, v in self._captured.items()} for j in range(len(self.sets))]
            for memo, means in zip(self.memos, self.means, strict=True):
                self.editor._means[memo] = means


class Editor:
    """Runs edits on the samples of the store at `root`.

    `checkpoint`, `base_model` and `device` override what a run manifest says (a checkpoint whose hash
    differs from the run's gives a separate edit run). `progress(message)` hears what takes time.
    `generators`: the process-wide cache to take generators from (default: one of this Editor's own).
    An Editor keeps what it has read and recomputed (parents, edit keys, set means) for its next edits and is
    used by one thread at a time: threads and sessions share the GeneratorCache, each with its own Editor.
    """

    def __init__(self, root: str | os.PathLike, *, checkpoint: str | None = None, base_model: str | None = None,
                 device: torch.device | str | None = None, progress: Callable[[str], None] | None = None,
                 generators: GeneratorCache | None = None):
        from pipeline.generate import pick_device

        self.root = Path(root)
        if not (self.root / "runs").is_dir():
            raise EditError(f"{self.root} is not a store (no runs/ folder)")
        self.checkpoint = checkpoint
        self.base_model = base_model
        self.device = pick_device(None if device is None else str(device))
        self.progress = progress or (lambda _msg: None)
        self.generators = generators if generators is not None else GeneratorCache()
        self._adapters: dict[str, tuple[Adapter, tuple]] = {}  # run -> (generator, its cache key)
        self._means: dict[tuple, dict[int, torch.Tensor]] = {}  # (set ids, layer, steps, ckpt) -> step -> mean
        self._manifests: dict[str, dict] = {}
        self._rows: dict[str, tuple[dict[int, dict], set[str]]] = {}  # run -> (index -> row, parts read)
        self._keys: dict[tuple, tuple[dict[str, str], set[str]]] = {}  # (model, edit run) -> (key -> id, parts)
        self._prompts: dict[str, dict[str, tuple[int, str | None]]] = {}  # run -> prompt -> (index, category)
        self._store = None

    @property
    def store(self):
        """The store, read through DuckDB (opened on first use; reopened after this Editor writes)."""
        from store import Store

        if self._store is None:
            self._store = Store(self.root)
        return self._store

    # -- reading the parents ----------------------------------------------------------------------------
    def manifest(self, run_id: str) -> dict | None:
        """A run's manifest (kept: what an edit reads of it, model, checkpoint and settings, never changes)."""
        from store import layout
        from store.writer import read_manifest

        if run_id not in self._manifests:
            try:
                manifest = read_manifest(layout.run_manifest_path(self.root, layout.check_name("run_id", run_id)))
            except ValueError:
                return None
            if manifest is None:
                return None
            self._manifests[run_id] = manifest
        return self._manifests[run_id]

    def _row(self, run_id: str, model: str, index: int) -> dict | None:
        """The stored row of sample `index` of a run, read from its samples parts (only the parts not read yet)."""
        from store import layout

        rows, seen = self._rows.setdefault(run_id, ({}, set()))
        if index in rows:
            return rows[index]
        for part in layout.list_parts(layout.samples_dir(self.root, model, run_id)):
            span = layout.parse_part_name(part.name)
            if part.name in seen or (span is not None and not span[0] <= index <= span[1]):
                continue  # a big run: only the part that holds the sample is read
            try:
                names = set(pq.read_schema(part).names)
                t = pq.read_table(part, columns=[c for c in _PARENT_COLUMNS if c in names])
            except Exception:  # noqa: BLE001 - a damaged commit record: its batch is not done
                continue
            seen.add(part.name)
            for r in t.to_pylist():
                rows[int(r["index"])] = r
        return rows.get(index)

    def parents(self, sample_ids: Sequence[str]) -> list[Parent]:
        """The stored samples `sample_ids`, in that order; EditError names the unknown ones."""
        from store import layout

        ids = list(dict.fromkeys(sample_ids))
        if not ids:
            raise EditError("no sample ids given")
        found: dict[str, Parent] = {}
        unknown, no_manifest = [], []
        for sid in ids:
            try:
                run, index = layout.split_sample_id(sid)
                layout.check_name("run_id", run)
            except ValueError:
                unknown.append(sid)
                continue
            manifest = self.manifest(run)
            if manifest is None:
                (unknown if not layout.run_manifest_path(self.root, run).exists() else no_manifest).append(sid)
                continue
            r = self._row(run, manifest["model"], index)
            if r is None or r.get("sample_id") != sid:
                unknown.append(sid)
                continue
            cid, pidx = r.get("class_id"), r.get("prompt_index")
            found[sid] = Parent(sid, run, manifest["model"], int(r["seed"]),
                                None if cid is None else int(cid), _text(r.get("prompt")), _text(r.get("label")),
                                manifest, None if pidx is None else int(pidx), _text(r.get("category")))
            why = refusal(sid, run, _json(manifest.get("settings")).get("kind"), _text(r.get("edit_op")),
                          _text(r.get("edit_parents")))
            if why is not None:
                raise EditError(why)
        if unknown:
            shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
            raise EditError(f"unknown sample{'s' if len(unknown) > 1 else ''} {shown}: not in the store {self.root}")
        if no_manifest:
            raise EditError(f"sample {no_manifest[0]}: its run has no readable manifest in {self.root}")
        return [found[s] for s in sample_ids]

    # -- generators -------------------------------------------------------------------------------------
    def generator_source(self, parent: Parent) -> GeneratorSource:
        """What `parent`'s run is generated with (its manifest, and this Editor's overrides), without loading
        it: `.key` is its key in the GeneratorCache, `.describe()` says where it loads from."""
        from pipeline import families
        from pipeline.adapters.edm import SHIPPED_DEMO

        settings = parent.settings
        # a teacher's run is stored under its student's key and names its own family in its settings
        name = settings.get("model_family") if settings.get("model_family") in families.MODELS else parent.model
        family = families.get_family(name) if name in families.MODELS else None
        if family is None:
            raise EditError(f"sample {parent.sample_id}: model {parent.model!r} is not one this code knows "
                            f"({', '.join(families.MODELS)})")
        sigmas = settings.get("sigmas")
        checkpoint = self.checkpoint or parent.manifest.get("checkpoint")
        prompted = family.conditioning == "prompt"
        options: dict = {}
        if settings.get("churn"):
            options["churn"] = json.dumps(settings["churn"], sort_keys=True)
        if family.recipe.guidance is not None:  # a guided teacher: the base model's UNet, no checkpoint of its own
            options.update(guidance=settings.get("guidance_scale", family.recipe.guidance),
                           steps=settings.get("steps"))
            checkpoint = self.checkpoint
        return GeneratorSource(
            model=name, checkpoint=None if checkpoint == SHIPPED_DEMO else checkpoint,
            checkpoint_sha256=None if self.checkpoint else parent.manifest.get("checkpoint_sha256"),
            base_model=(self.base_model or parent.manifest.get("base_model")) if prompted else None,
            device=str(self.device), dtype=settings.get("dtype") or "float32",
            steps=len(sigmas) if sigmas else None, x0_previews=bool(sigmas) and len(sigmas) > 1,
            resolution=settings.get("resolution") if prompted else None, options=tuple(sorted(options.items())))

    def adapter(self, parent: Parent) -> Adapter:
        """The generator of `parent`'s run, built from its manifest (and the overrides), from the cache."""
        if parent.run_id in self._adapters:
            return self._adapters[parent.run_id][0]
        from pipeline.adapters import build_adapter

        source = self.generator_source(parent)
        sigmas = parent.settings.get("sigmas")

        def load() -> Adapter:
            self.progress(f"loading {source.describe()} for run {parent.run_id}")
            options = {} if source.base_model is None and source.resolution is None else \
                dict(base_model=source.base_model, resolution=source.resolution)
            steps = source.steps
            for name, value in source.options:
                if name == "churn":
                    from pipeline.sampling import Churn

                    options["churn"] = Churn.from_settings(json.loads(value))
                elif name == "steps":
                    steps = value
                else:
                    options[name] = value
            try:
                return build_adapter(source.model, checkpoint=source.checkpoint, device=self.device,
                                     steps=steps, dtype=getattr(torch, source.dtype, torch.float32),
                                     x0_previews=source.x0_previews, **options)
            except EditUnsupported as exc:
                raise EditError(str(exc)) from None

        adapter = self.generators.get_or_load(source.key, load)
        ident = adapter.identity()
        got = ident.get("settings", {}).get("sigmas")
        if sigmas is not None and got is not None and not np.allclose(got, sigmas, rtol=1e-6, atol=0):
            raise EditError(f"run {parent.run_id}: cannot rebuild its sampling schedule (sigmas {sigmas}, "
                            f"the loader gives {got})")
        stored_sha = source.checkpoint_sha256
        if stored_sha and ident.get("checkpoint_sha256") != stored_sha:
            raise EditError(f"run {parent.run_id}: the checkpoint {source.checkpoint or '(shipped)'} is not the one "
                            f"it was generated with (sha256 {stored_sha[:12]}...); give --checkpoint")
        self._adapters[parent.run_id] = (adapter, source.key)
        return adapter

    def _using(self, parent: Parent):
        """The lock of `parent`'s generator: held while hooks are on its module and it samples."""
        return self.generators.lock(self._adapters[parent.run_id][1])

    @staticmethod
    def _prompted(model: str) -> bool:
        from pipeline import families

        return model in families.MODELS and families.get_family(model).conditioning == "prompt"

    def _check_condition_kind(self, parent: Parent, *, label=None, prompt=None) -> None:
        prompted = self._prompted(parent.model)
        if prompted and label is not None:
            raise EditError(f"model {parent.model} is conditioned on a prompt, not a class label: use --prompt")
        if not prompted and prompt is not None:
            raise EditError(f"model {parent.model} is conditioned on a class label, not a prompt: use --label")

    def _condition(self, parent: Parent, adapter: Adapter, *, label: int | None = None, prompt: str | None = None):
        """The condition of `parent`, or of `label`/`prompt` in its run; EditError for the wrong kind."""
        self._check_condition_kind(parent, label=label, prompt=prompt)
        if self._prompted(parent.model):
            text = parent.prompt if prompt is None else str(prompt)
            if text is None or not text.strip():
                raise EditError(f"sample {parent.sample_id}: no prompt to condition on" if prompt is None
                                else "--prompt is empty")
            try:
                cond = adapter.condition(prompt=text)
            except ValueError as exc:  # a family without edits
                raise EditError(str(exc)) from None
            index, category = (parent.prompt_index, parent.category) if text == parent.prompt \
                else self._run_prompts(parent).get(text, (None, None))
            return dataclasses.replace(cond, prompt_index=index, category=category)
        try:
            return adapter.condition(class_id=parent.class_id if label is None else int(label))
        except ValueError as exc:  # a label out of range; a family without edits
            raise EditError(str(exc)) from None

    def _run_prompts(self, parent: Parent) -> dict[str, tuple[int, str | None]]:
        """prompt -> (row of the run's text embeddings, category): a new prompt that is one of the run's keeps
        its index and category."""
        from store import layout

        if parent.run_id not in self._prompts:
            out: dict[str, tuple[int, str | None]] = {}
            path = layout.text_embeddings_path(self.root, parent.model, parent.run_id)
            try:
                t = pq.read_table(path, columns=["prompt_index", "prompt", "category"]).to_pylist()
                out = {r["prompt"]: (int(r["prompt_index"]), r["category"]) for r in t}
            except Exception:  # noqa: BLE001 - no (readable) table: new prompts get no index
                out = {}
            self._prompts[parent.run_id] = out
        return self._prompts[parent.run_id]

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

    def _set(self, parent: Parent, members: Sequence[Parent], what: str) -> list[Parent]:
        models = sorted({m.model for m in members} | {parent.model})
        if len(models) > 1:
            counts = {m: sum(1 for x in members if x.model == m) for m in models}
            raise EditError(f"the {what} mixes models: " + ", ".join(f"{m} ({n} sample{'s' if n != 1 else ''})"
                                                                     for m, n in counts.items())
                            + f"; it must hold samples of the parent's model, {parent.model}")
        return list(members)

    # -- the sets' activations --------------------------------------------------------------------------
    def set_activations(self, members: Sequence[Parent], layer: str, steps: Sequence[int],
                        what: str = "set") -> dict[int, torch.Tensor]:
        """Step -> the mean over `members` of layer `layer`'s full output (float32, (C, H, W)), recomputed by
        running the members again from their stored seeds and conditions (kept for the next edit with it)."""
        return self.sets_activations([(members, what)], layer, steps)[0]

    def _memo(self, members: Sequence[Parent], layer: str, steps: Sequence[int]) -> tuple:
        ckpts = tuple(sorted({str(self._ckpt(self.adapter(m))) for m in members}))
        return tuple(sorted({m.sample_id for m in members})), layer, tuple(steps), ckpts

    def sets_activations(self, sets: Sequence[tuple[Sequence[Parent], str]], layer: str,
                         steps: Sequence[int]) -> list[dict[int, torch.Tensor]]:
        """`set_activations` of several (members, what) sets at once: the samples of all of them that this
        Editor has not recomputed yet run again together, each run's in one batch (per SET_BATCH)."""
        memos = [self._memo(ms, layer, steps) for ms, _ in sets]
        todo = [(k, ms, what) for k, ((ms, what), memo) in enumerate(zip(sets, memos, strict=True))
                if memo not in self._means and memo not in memos[:k]]
        if todo:
            self._set_means(todo, memos, layer, list(steps))
        return [self._means[m] for m in memos]

    def _say_recomputing(self, sets, layer: str, where: str = "") -> None:
        for ms, what in sets:
            by_run = {m.run_id: m for m in ms}
            stored = {_json(m.manifest.get("reduce")).get(layer) for m in by_run.values()}
            kept = ", ".join(sorted({str(v) if v else "not stored" for v in stored}))
            n = len({m.sample_id for m in ms})
            self.progress(f"{what}: recomputing the full activations of {n} sample{'s' if n != 1 else ''} at "
                          f"{layer} (the store keeps {kept}, float16){where}")

    def _set_means(self, todo, memos, layer: str, steps: list[int]) -> None:
        self._say_recomputing([(ms, what) for _k, ms, what in todo], layer)
        members: dict[str, Parent] = {}
        for _k, ms, _what in todo:
            members.update({m.sample_id: m for m in ms})
        by_run: dict[str, list[Parent]] = {}
        for m in members.values():
            by_run.setdefault(m.run_id, []).append(m)
        weights = {sid: torch.zeros(len(todo)) for sid in members}  # sample -> its share of each set's mean
        for j, (_k, ms, _what) in enumerate(todo):
            distinct = {m.sample_id for m in ms}
            for sid in distinct:
                weights[sid][j] = 1.0 / len(distinct)
        sums: dict[int, torch.Tensor] = {}
        for run, ms in by_run.items():
            adapter = self.adapter(ms[0])
            n = int(getattr(adapter, "num_steps", 1))
            missing = [s for s in steps if s >= n]
            if missing:
                whats = [what for _k, s, what in todo if any(m.run_id == run for m in s)]
                raise EditError(f"the {whats[0]} holds samples of run {run}, sampled in {n} step"
                                f"{'s' if n > 1 else ''}: it has no step {', '.join(map(str, missing))}")
            paths = adapter.resolve_layers([layer])
            for lo in range(0, len(ms), SET_BATCH):
                chunk = ms[lo:lo + SET_BATCH]
                w = torch.stack([weights[m.sample_id] for m in chunk], dim=1)  # (sets, batch)

                def keep(step, out, w=w):
                    if step in steps:
                        out = out.detach().to("cpu", torch.float32)
                        part = torch.tensordot(w, out, dims=([1], [0]))  # (sets, C, H, W)
                        sums[step] = part if step not in sums else sums[step] + part

                with self._using(ms[0]):
                    inputs = self._inputs(chunk, adapter)
                    with Intervention(adapter.root, paths, {layer: keep}) as grab:
                        adapter.sample_inputs(inputs, grab)
        for j, (k, _ms, _what) in enumerate(todo):
            self._means[memos[k]] = {s: v[j] for s, v in sums.items()}

    def _inputs(self, parents: Sequence[Parent], adapter: Adapter) -> dict:
        return adapter.edit_inputs([p.seed for p in parents], [self._condition(p, adapter) for p in parents])

    # -- the operations ---------------------------------------------------------------------------------
    def regenerate(self, sample_id: str, *, label: int | None = None, prompt: str | None = None,
                   seed: int | None = None) -> list[str]:
        """The sample with another class label (or prompt) and/or noise seed; one result id."""
        return self.regenerate_many([Regeneration(sample_id, label=label, prompt=prompt, seed=seed)])

    def regenerate_many(self, requests: Iterable[Regeneration | Mapping]) -> list[str]:
        """Several regenerations (Regeneration objects, or mappings with sample_id and any of label, prompt,
        seed): one forward batch and one write per parent run; one result id per request, in order."""
        try:
            reqs = [r if isinstance(r, Regeneration) else Regeneration(**dict(r)) for r in requests]
        except TypeError as exc:
            raise EditError(f"a regeneration takes sample_id and any of label, prompt, seed: {exc}") from None
        if not reqs:
            raise EditError("no regenerations asked for")
        parents = self.parents([r.sample_id for r in reqs])
        for req, parent in zip(reqs, parents, strict=True):  # the wrong kind of condition: before any loading
            self._check_condition_kind(parent, label=req.label, prompt=req.prompt)
        groups: dict[str, list[tuple[int, Parent, _Job]]] = {}
        for k, (req, parent) in enumerate(zip(reqs, parents, strict=True)):
            adapter = self.adapter(parent)
            cond = self._condition(parent, adapter, label=req.label, prompt=req.prompt)
            new_seed = parent.seed if req.seed is None else int(req.seed)
            changes = []
            if cond.prompt is not None:
                if cond.prompt != parent.prompt:
                    changes.append(f"prompt {parent.prompt!r} -> {cond.prompt!r}")
                inputs = dict(prompt=cond.prompt)
            else:
                if cond.class_id != parent.class_id:
                    changes.append(f"label {parent.class_id} -> {cond.class_id}")
                inputs = dict(class_id=cond.class_id)
            if new_seed != parent.seed:
                changes.append(f"seed {parent.seed} -> {new_seed}")
            key = edit_key("regenerate", parent=req.sample_id, seed=new_seed, ckpt=self._ckpt(adapter), **inputs)
            job = _Job(key, dict(seed=new_seed, condition=cond, edit_op="regenerate", edit_parents=req.sample_id,
                                 edit_change="; ".join(changes) or "nothing (the parent again)"))
            groups.setdefault(parent.run_id, []).append((k, parent, job))
        out: list[str | None] = [None] * len(reqs)
        for items in groups.values():
            parent = items[0][1]
            adapter = self.adapter(parent)

            def compute(todo, recorder, adapter=adapter):
                inputs = adapter.edit_inputs([j.row["seed"] for j in todo], [j.row["condition"] for j in todo])
                return adapter.sample_inputs(inputs, recorder)

            ids = self._run(parent, adapter, [job for _k, _p, job in items], compute)
            for (k, _p, _j), sid in zip(items, ids, strict=True):
                out[k] = sid
        return out

    def interpolate(self, from_id: str, to_id: str, frames: int = 8) -> list[str]:
        """`frames` samples from one parent to the other (both ends included: they equal the parents)."""
        if int(frames) < 2:
            raise EditError(f"--frames must be at least 2 (the two ends), got {frames}")
        a, b = self.parents([from_id, to_id])
        if a.run_id != b.run_id:
            raise EditError(f"interpolate needs two samples of one run: {from_id} is in run {a.run_id}, "
                            f"{to_id} in run {b.run_id}")
        adapter = self.adapter(a)
        ckpt = self._ckpt(adapter)
        conds = {p.sample_id: self._condition(p, adapter) for p in (a, b)}
        ts = [k / (frames - 1) for k in range(frames)]
        jobs = []
        for k, t in enumerate(ts):
            near = a if t <= 0.5 else b
            jobs.append(_Job(edit_key("interpolate", parents=[from_id, to_id], frame=k, frames=frames, ckpt=ckpt),
                             dict(seed=near.seed, condition=conds[near.sample_id], edit_op="interpolate",
                                  edit_parents=f"{from_id},{to_id}", edit_frame=k,
                                  edit_change=f"t = {t:.4g} from {a.label} to {b.label}", t=t)))

        def compute(todo, recorder):
            ia, ib = self._inputs([a], adapter), self._inputs([b], adapter)
            mixed = [adapter.mix_inputs(ia, ib, j.row["t"]) for j in todo]
            inputs = {k: torch.cat([m[k] for m in mixed]) for k in mixed[0]}
            return adapter.sample_inputs(inputs, recorder)

        return self._run(a, adapter, jobs, compute)

    def patch(self, sample_id: str, layer: str, set_ids: Sequence[str], steps: Sequence[int] | None = None) -> list[str]:
        """The sample with `layer`'s output at `steps` (None: all) replaced by the set's mean activation."""
        return self.patch_many([sample_id], layer, set_ids, steps)

    def patch_many(self, sample_ids: Sequence[str], layer: str, set_ids: Sequence[str],
                   steps: Sequence[int] | None = None) -> list[str]:
        """`patch` of several samples of one run with one set: the set is recomputed once, the samples run
        as one batch and are written at once; one result id per sample, in order."""
        if not sample_ids:
            raise EditError("no sample ids given")
        found = self.parents([*sample_ids, *set_ids])
        parents, members = found[:len(sample_ids)], found[len(sample_ids):]
        runs = sorted({p.run_id for p in parents})
        if len(runs) > 1:
            raise EditError(f"patch of several samples needs samples of one run, got runs {', '.join(runs)}")
        parent = parents[0]
        adapter = self.adapter(parent)
        paths = adapter.resolve_layers([layer])
        steps = self._check_steps(parent, adapter, steps)
        members = self._set(parent, members, "set")
        ids = [m.sample_id for m in members]
        ckpt = self._ckpt(adapter)
        jobs = [_Job(edit_key("patch", parent=p.sample_id, layer=layer, steps=steps, set=sorted(set(ids)),
                              ckpt=ckpt),
                     dict(seed=p.seed, condition=self._condition(p, adapter), edit_op="patch",
                          edit_parents=p.sample_id, edit_layer=layer, edit_steps=",".join(map(str, steps)),
                          edit_set=",".join(ids), parent=p))
                for p in parents]
        sets = _SetMeans(self, parent, [(members, "set")], layer, steps, len(jobs))

        def compute(todo, recorder):
            n = len(todo)

            def replace(step, out):
                if step not in steps:
                    return None
                (mean,) = sets.at(step, out, n)
                mean = mean.to(out.device, out.dtype).expand_as(out[:n])
                return torch.cat([mean, out[n:]]) if sets.members else mean.contiguous()

            inputs = self._inputs([j.row["parent"] for j in todo] + sets.members, adapter)
            with Intervention(adapter.root, paths, {layer: replace}) as edit:
                images = adapter.sample_inputs(inputs, tag(edit, recorder))
            sets.finish()
            return images

        return self._run(parent, adapter, jobs, compute, lambda _todo: sets.prepare())

    def steer(self, sample_id: str, layer: str, from_ids: Sequence[str], to_ids: Sequence[str],
              alphas: Sequence[float], steps: Sequence[int] | None = None) -> list[str]:
        """One result per alpha (in the order given): `layer`'s output + alpha·(mean(to) - mean(from))."""
        if not alphas:
            raise EditError("give at least one alpha")
        found = self.parents([sample_id, *from_ids, *to_ids])
        parent, set_a, set_b = found[0], found[1:1 + len(from_ids)], found[1 + len(from_ids):]
        adapter = self.adapter(parent)
        paths = adapter.resolve_layers([layer])
        steps = self._check_steps(parent, adapter, steps)
        set_a, set_b = self._set(parent, set_a, "from-set"), self._set(parent, set_b, "to-set")
        ids_a, ids_b = [m.sample_id for m in set_a], [m.sample_id for m in set_b]
        base = dict(parent=sample_id, layer=layer, steps=steps, a=sorted(set(ids_a)), b=sorted(set(ids_b)),
                    ckpt=self._ckpt(adapter))
        cond = self._condition(parent, adapter)
        jobs = [_Job(edit_key("steer", alpha=float(al), **base),
                     dict(seed=parent.seed, condition=cond, edit_op="steer", edit_parents=sample_id,
                          edit_layer=layer, edit_steps=",".join(map(str, steps)), edit_set=",".join(ids_b),
                          edit_from_set=",".join(ids_a), edit_alpha=float(al)))
                for al in alphas]
        sets = _SetMeans(self, parent, [(set_a, "from-set"), (set_b, "to-set")], layer, steps, len(jobs))

        def compute(todo, recorder):
            n = len(todo)
            alpha = torch.tensor([j.row["edit_alpha"] for j in todo], dtype=torch.float32)

            def add(step, out):
                if step not in steps:
                    return None
                mean_a, mean_b = sets.at(step, out, n)
                direction = (mean_b - mean_a).to(out.device, out.dtype)
                scale = alpha.to(out.device).reshape(-1, *([1] * (out.ndim - 1)))
                # alpha = 0 adds nothing at all (not even -0.0 rounding): the parent bit for bit
                mine = out[:n]
                edited = torch.where(scale == 0, mine, mine + scale * direction)
                return torch.cat([edited, out[n:]]) if sets.members else edited

            inputs = self._inputs([parent] * n + sets.members, adapter)
            with Intervention(adapter.root, paths, {layer: add}) as edit:
                images = adapter.sample_inputs(inputs, tag(edit, recorder))
            sets.finish()
            return images

        return self._run(parent, adapter, jobs, compute, lambda _todo: sets.prepare())

    # -- writing ----------------------------------------------------------------------------------------
    def _ckpt(self, adapter: Adapter) -> str | None:
        return getattr(adapter, "checkpoint_sha256", None) or adapter.identity().get("checkpoint_sha256")

    def edit_run_id(self, parent: Parent, adapter: Adapter) -> str:
        sha = self._ckpt(adapter)
        run_id = f"{EDIT_KIND}-{parent.run_id}"
        if sha and sha != parent.manifest.get("checkpoint_sha256"):
            run_id += f"-{sha[:8]}"
        return run_id

    def _stored_keys(self, model: str, run_id: str) -> dict[str, str]:
        """edit_key -> sample_id of the committed samples of an edit run (parts read once per Editor)."""
        from store import layout

        keys, seen = self._keys.setdefault((model, run_id), ({}, set()))
        new = [p for p in layout.list_parts(layout.samples_dir(self.root, model, run_id)) if p.name not in seen]
        for part, t in _read_parts(new, ["sample_id", "edit_key"]):
            seen.add(part.name)
            for sid, key in zip(t["sample_id"].to_pylist(), t["edit_key"].to_pylist(), strict=True):
                if key is not None:
                    keys.setdefault(key, sid)
        return keys

    def _run(self, parent: Parent, adapter: Adapter, jobs: list[_Job], compute, prepare=None) -> list[str]:
        """Compute the jobs whose key the edit run lacks, write them as one batch; the ids of all jobs."""
        from store import RunWriter, layout

        run_id = self.edit_run_id(parent, adapter)
        have = self._stored_keys(parent.model, run_id)
        todo = list({j.key: j for j in jobs if j.key not in have}.values())
        if todo:
            if prepare is not None:
                prepare(todo)  # takes the locks it needs itself (a set may hold samples of other runs)
            layers = list(parent.manifest.get("layers") or [])
            reduce = _json(parent.manifest.get("reduce"))
            self.progress(f"{jobs[0].row['edit_op']}: generating {len(todo)} sample{'s' if len(todo) > 1 else ''}")
            with self._using(parent):
                # the steps the parent's run records (its settings' record_steps; absent: all)
                with Recorder(adapter.root, adapter.resolve_layers(layers), reduce,
                              parent.settings.get("record_steps")) as recorder:
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
                    have = self._stored_keys(parent.model, run_id)  # another process may have written
                    fresh = [k for k, j in enumerate(todo) if j.key not in have]
                    if fresh:
                        done = writer.done_indices()
                        start = int(done.max()) + 1 if len(done) else 0
                        rows = [_sample_row(todo[k], adapter) for k in fresh]
                        writer.write_batch(
                            np.arange(start, start + len(fresh)), rows, [images[k] for k in fresh],
                            {layer: [{**e, "array": e["array"][fresh]} for e in entries]
                             for layer, entries in activations.items()},
                            {s: [v[k] for k in fresh] for s, v in previews.items()} if previews else None)
                        for n, k in enumerate(fresh):
                            have[todo[k].key] = layout.sample_id(run_id, start + n)
            self._store = None  # the next read through the store sees the new parts
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


def _read_parts(parts: list[Path], columns: list[str]) -> list[tuple[Path, object]]:
    """(part, table of `columns`) for each readable part, read on a few threads (an edit run has many small
    parts); a damaged part (its batch is not done) is left out."""
    def read(part):
        try:
            return part, pq.read_table(part, columns=columns, use_threads=False)
        except Exception:  # noqa: BLE001 - a damaged commit record: its batch is not done
            return part, None

    if len(parts) < 8:
        done = [read(p) for p in parts]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:
            done = list(pool.map(read, parts))
    return [(p, t) for p, t in done if t is not None]


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
