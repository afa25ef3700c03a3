"""Integrity check of a store folder (`python -m store verify DIR`).

Problems (exit 1): corrupt files (unreadable Parquet footer or pages, wrong columns, rows that do not
match their file name), foreign files (anything the layout does not name), images and x0 previews
referenced by committed samples but missing. Notes (exit 0): staging leftovers and orphans of uncommitted
batches, which are invisible to readers and removed by the next writer of their run. A damaged samples
part (the commit record of its batch) makes its batch uncommitted: rerunning the command that made the
run removes it and its orphans and generates the batch again.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from . import layout, schema


class NotAStore(ValueError):
    pass


# samples columns holding the sample ids an edit result comes from (pipeline/edit.py)
EDIT_REFS = ("edit_parents", "edit_set", "edit_from_set")
REDONE = " (its batch counts as not done: removed and generated again when its run resumes)"


@dataclass
class Report:
    root: Path
    checked: int = 0
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (relpath, reason)
    foreign: list[str] = field(default_factory=list)
    missing_images: list[tuple[str, str]] = field(default_factory=list)  # (relpath, sample_id)
    missing_previews: list[tuple[str, str, int]] = field(default_factory=list)  # (relpath, sample_id, step)
    missing_parts: list[str] = field(default_factory=list)  # activation parts of committed batches
    # edit provenance (the edit_* columns) naming samples the store does not hold: (relpath, sample_id, ref)
    missing_refs: list[tuple[str, str, str]] = field(default_factory=list)
    staging: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    redone: list[str] = field(default_factory=list)  # damaged samples parts: their batches count as not done

    @property
    def ok(self) -> bool:
        return not (self.corrupt or self.foreign or self.missing_images or self.missing_previews
                    or self.missing_parts or self.missing_refs)

    def lines(self) -> list[str]:
        out = [f"CORRUPT  {p}: {why}" + (REDONE if p in self.redone else "") for p, why in self.corrupt]
        out += [f"FOREIGN  {p}" for p in self.foreign]
        out += [f"MISSING  {p} (image of {sid})" for p, sid in self.missing_images]
        out += [f"MISSING  {p} (x0 preview of {sid}, step {k})" for p, sid, k in self.missing_previews]
        out += [f"MISSING  {p} (activations of a committed batch)" for p in self.missing_parts]
        out += [f"MISSING  {ref} (named by the edit provenance of {sid} in {p})" for p, sid, ref in self.missing_refs]
        out += [f"note: staging leftover {p} (removed by the next writer of its run)" for p in self.staging]
        out += [f"note: orphan {p} (its batch has no intact samples part: invisible to readers; removed, and "
                f"the batch generated again, when its run resumes)" for p in self.orphans]
        if self.orphans or self.redone:
            out.append("note: a run resumes when the command that made it is run again (python -m pipeline "
                       "generate ... or python -m pipeline demo)")
        verdict = "OK" if self.ok else "PROBLEMS FOUND"
        out.append(
            f"{verdict}: {self.checked} files checked in {self.root}; {len(self.corrupt)} corrupt, "
            f"{len(self.foreign)} foreign, {len(self.missing_images)} missing images, "
            f"{len(self.missing_previews)} missing previews, "
            f"{len(self.missing_parts)} missing activation parts, "
            + (f"{len(self.missing_refs)} missing edit parents or set members, " if self.missing_refs else "") +
            f"{len(self.staging)} staging leftovers, {len(self.orphans)} orphans"
        )
        return out


def _png_problem(source) -> str | None:
    """Why `source` (a path or file object) is not a readable PNG, or None."""
    try:
        from PIL import Image

        with Image.open(source, formats=["PNG"]) as im:
            im.verify()
        return None
    except Exception as e:
        return f"unreadable PNG: {type(e).__name__}: {e}"


def _valid_name(name: str) -> bool:
    try:
        layout.check_name("run_id", name)
        return True
    except ValueError:
        return False


def is_store(root: Path) -> bool:
    root = Path(root)
    return root.is_dir() and any((root / t).is_dir() for t in (layout.RUNS, layout.SAMPLES, layout.ACTIVATIONS))


class _Verifier:
    def __init__(self, root: Path, quick: bool):
        self.root = root
        self.quick = quick
        self.r = Report(root)
        self.committed: dict[tuple[str, str], dict[str, set[str]]] = {}  # (model, run) -> part -> ids
        self.image_refs: list[tuple[str, str]] = []  # (images part or format 1 PNG file, sample_id)
        self.preview_steps: dict[str, set[int]] = {}  # sample_id -> steps its row lists
        self.preview_refs: list[tuple[str, str, int]] = []  # (relpath, sample_id, step)
        self.part_pngs: dict[str, set[tuple[str, int | None]]] = {}  # images part -> its (sample_id, step) rows
        self.edit_refs: list[tuple[str, str, str]] = []  # (samples part, sample_id, a sample id it names)

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def read(self, path: Path, kind: str, columns: list[str] | None = None):
        """The table at `path` (footer only when quick), or None after recording it as corrupt."""
        self.r.checked += 1
        try:
            pf = pq.ParquetFile(path, page_checksum_verification=True)
            names = pf.schema_arrow.names
            missing = [c for c in schema.REQUIRED.get(kind, ()) if c not in names]
            if missing:
                raise ValueError(f"missing columns {missing}")
            if self.quick and columns is None:
                return pf.schema_arrow.empty_table()
            return pf.read(columns=columns) if self.quick else pf.read()
        except Exception as e:
            self.r.corrupt.append((self.rel(path), f"{type(e).__name__}: {e}"))
            return None

    def walk(self, top: str, keys: tuple[str, ...], on_file: Callable[[dict, Path], None]) -> None:
        """Visit `top/key1=v/key2=v/.../file`; anything off that shape is foreign."""
        def visit(folder: Path, depth: int, parts: dict) -> None:
            for e in sorted(os.scandir(folder), key=lambda e: e.name):
                p = Path(e.path)
                if depth < len(keys):
                    value = layout.parse_hive(e.name, keys[depth]) if e.is_dir() else None
                    if value is None:
                        self.foreign_or_staging(p)
                    else:
                        visit(p, depth + 1, {**parts, keys[depth]: value})
                elif e.is_dir():
                    self.r.foreign.append(self.rel(p) + "/")
                else:
                    on_file(parts, p)
        if (self.root / top).is_dir():
            visit(self.root / top, 0, {})

    def foreign_or_staging(self, p: Path) -> None:
        if p.is_file() and layout.is_staging(p.name):
            self.r.staging.append(self.rel(p))
        else:
            self.r.foreign.append(self.rel(p) + ("/" if p.is_dir() else ""))

    # -- per folder ------------------------------------------------------------------------------------

    def runs(self, _parts: dict, p: Path) -> None:
        if layout.is_staging(p.name):
            self.r.staging.append(self.rel(p))
        elif p.suffix == ".parquet" and _valid_name(p.stem):
            t = self.read(p, "runs")
            if t is not None and not self.quick and t.num_rows != 1:
                self.r.corrupt.append((self.rel(p), f"a manifest has one row, found {t.num_rows}"))
            elif t is not None and not self.quick and t["run_id"][0].as_py() != p.stem:
                self.r.corrupt.append((self.rel(p), f"run_id {t['run_id'][0].as_py()!r} != file name"))
        else:
            self.r.foreign.append(self.rel(p))

    def samples(self, parts: dict, p: Path) -> None:
        rng = layout.parse_part_name(p.name)
        if rng is None:
            self.foreign_or_staging(p)
            return
        before = len(self.r.corrupt)
        t = self.read(p, "samples", ["sample_id", "index", "image_path"])
        if t is None:  # unreadable, damaged or without `index`: the writer takes its batch for not done
            why = self.r.corrupt[before][1]
            if "missing columns" not in why or "'index'" in why:
                self.r.redone.append(self.rel(p))
            return
        if not self.quick:
            run = parts["run_id"]
            idx = t["index"].to_numpy()
            ids = t["sample_id"].to_pylist()
            expect = [layout.sample_id(run, i) for i in idx.tolist()]
            if ids != expect:
                self.r.corrupt.append((self.rel(p), f"sample_id does not match run {run!r} and index"))
                return
            if len(idx) and (idx.min() != rng[0] or idx.max() != rng[1]):
                self.r.corrupt.append((self.rel(p), f"indices {idx.min()}..{idx.max()} do not match the name"))
                return
            refs = t["image_path"].to_pylist() if "image_path" in t.column_names else [None] * len(ids)
            # preview_steps is absent from parts written before previews existed
            listed = t["preview_steps"].to_pylist() if "preview_steps" in t.column_names else [None] * len(ids)
            for sid, i, ref, steps in zip(ids, idx.tolist(), refs, listed, strict=True):
                if any(k is None or k < 0 for k in steps or ()):
                    self.r.corrupt.append((self.rel(p), f"preview_steps of {sid} is not a list of steps: {steps}"))
                    continue
                in_part = ref is not None and ref.endswith(".parquet")  # format 2; format 1: a file per PNG
                if ref is not None:
                    self.image_refs.append((ref, sid))
                for k in sorted(set(steps or ())):
                    self.preview_steps.setdefault(sid, set()).add(k)
                    self.preview_refs.append((ref if in_part else layout.preview_relpath(parts["model"], run, i, k),
                                              sid, k))
            self.provenance(p, t, ids)
        else:
            ids = []
        self.committed.setdefault((parts["model"], parts["run_id"]), {})[p.name] = set(ids)

    def provenance(self, p: Path, t, ids: list[str]) -> None:
        """Remember the sample ids that edit results name (parents, sets): each must be in the store."""
        for column in EDIT_REFS:
            if column not in t.column_names:  # parts written before edits existed
                continue
            for sid, refs in zip(ids, t[column].to_pylist(), strict=True):
                for ref in (refs or "").split(","):
                    if ref:
                        self.edit_refs.append((self.rel(p), sid, ref))

    def activations(self, parts: dict, p: Path) -> None:
        if layout.parse_part_name(p.name) is None:
            self.foreign_or_staging(p)
            return
        t = self.read(p, "activations", ["sample_id"])
        if t is not None:
            self.of_committed_batch(parts, p, t)

    def of_committed_batch(self, parts: dict, p: Path, t) -> bool:
        """Whether a batch's activation or images part `p` (read as `t`) belongs to a committed batch and
        holds only its samples; records an orphan or a corrupt part otherwise."""
        committed = self.committed.get((parts["model"], parts["run_id"]), {})
        if p.name not in committed:
            self.r.orphans.append(self.rel(p))
            return False
        if not self.quick and not set(t["sample_id"].to_pylist()) <= committed[p.name]:
            self.r.corrupt.append((self.rel(p), "rows for samples that its samples part does not hold"))
            return False
        return True

    def images(self, parts: dict, p: Path) -> None:
        if layout.parse_part_name(p.name) is not None:
            self.image_part(parts, p)
            return
        index = layout.parse_image_name(p.name)
        preview = layout.parse_preview_name(p.name) if index is None else None
        if index is None and preview is None:
            self.foreign_or_staging(p)
            return
        if preview is not None:
            self.preview(parts, p, *preview)
            return
        self.r.checked += 1
        run = parts["run_id"]
        ids = set().union(*self.committed.get((parts["model"], run), {}).values())
        if not self.quick and layout.sample_id(run, index) not in ids:
            self.r.orphans.append(self.rel(p))
        if not self.quick:
            self._check_png(p)

    def image_part(self, parts: dict, p: Path) -> None:
        """A batch's images part: an orphan without its samples part; every PNG in it must decode."""
        t = self.read(p, "images", ["sample_id", "step"])
        if t is None or not self.of_committed_batch(parts, p, t) or self.quick:
            return
        ids, steps = t["sample_id"].to_pylist(), t["step"].to_pylist()
        self.part_pngs[self.rel(p)] = set(zip(ids, steps, strict=True))
        for sid, step, png in zip(ids, steps, t["png"].to_pylist(), strict=True):
            if (why := _png_problem(io.BytesIO(png))) is not None:
                what = "image" if step is None else f"x0 preview of step {step}"
                self.r.corrupt.append((self.rel(p), f"{what} of {sid}: {why}"))

    def preview(self, parts: dict, p: Path, index: int, step: int) -> None:
        """A preview is an orphan unless its committed sample lists its step in `preview_steps`."""
        self.r.checked += 1
        if self.quick:
            return
        if step not in self.preview_steps.get(layout.sample_id(parts["run_id"], index), ()):
            self.r.orphans.append(self.rel(p))
        self._check_png(p)

    def _check_png(self, p: Path) -> None:
        if (why := _png_problem(p)) is not None:
            self.r.corrupt.append((self.rel(p), why))

    def has_png(self, rel: str, sid: str, step: int | None = None) -> bool:
        """Whether the PNG that a samples row refers to exists: a row of an images part, or a file."""
        if rel.endswith(".parquet"):
            return (sid, step) in self.part_pngs.get(rel, ())
        return (self.root / rel).is_file()

    def missing_activation_parts(self) -> None:
        """Every committed batch has one activation part per layer of its run's manifest."""
        for (model, run), parts in sorted(self.committed.items()):
            manifest = layout.run_manifest_path(self.root, run)
            try:
                md = pq.read_table(manifest, columns=["model", "layers"]).to_pylist()[0]
            except Exception:  # missing or corrupt manifest: reported on its own (or nothing to compare with)
                continue
            if md["model"] != model:
                continue
            for layer in md["layers"] or []:
                for name in sorted(parts):
                    p = layout.activations_dir(self.root, model, layer, run) / name
                    if not p.is_file():
                        self.r.missing_parts.append(self.rel(p))

    def text_embeddings(self, _parts: dict, p: Path) -> None:
        if p.name == layout.PROMPTS_FILE:
            self.read(p, "text_embeddings")
        else:
            self.foreign_or_staging(p)

    def derived(self, folder: Path) -> None:
        for dirpath, _dirs, files in os.walk(folder):
            for n in sorted(files):
                p = Path(dirpath) / n
                if n.endswith(".parquet"):
                    self.read(p, "derived")
                else:
                    self.foreign_or_staging(p)


def verify(root: str | os.PathLike, quick: bool = False) -> Report:
    """Check every file of the store at `root`. `quick` reads footers only (no pages, no cross-checks)."""
    root = Path(root)
    if not is_store(root):
        raise NotAStore(f"{root} is not a store: expected a folder holding {layout.RUNS}/, {layout.SAMPLES}/ "
                        f"or {layout.ACTIVATIONS}/")
    v = _Verifier(root, quick)
    for e in sorted(os.scandir(root), key=lambda e: e.name):
        if e.name not in layout.TOP_LEVEL or not e.is_dir():
            v.r.foreign.append(e.name + ("/" if e.is_dir() else ""))
    v.walk(layout.RUNS, (), v.runs)
    v.walk(layout.SAMPLES, ("model", "run_id"), v.samples)  # before activations/images: they need the commits
    v.walk(layout.ACTIVATIONS, ("model", "layer", "run_id"), v.activations)
    v.walk(layout.IMAGES, ("model", "run_id"), v.images)
    v.walk(layout.TEXT_EMBEDDINGS, ("model", "run_id"), v.text_embeddings)
    for top in (layout.CACHES, *layout.LEGACY_CACHE_TOPS):
        v.derived(root / top)
    if not quick:  # every image a committed sample refers to, and every preview step it lists, exists
        v.r.missing_images.extend(ref for ref in v.image_refs if not v.has_png(*ref))
        v.r.missing_previews.extend(ref for ref in v.preview_refs if not v.has_png(*ref))
    v.missing_activation_parts()
    if not quick:
        committed = set().union(*(ids for batches in v.committed.values() for ids in batches.values()))
        v.r.missing_refs.extend(r for r in v.edit_refs if r[2] not in committed)
    return v.r
