"""Real images for `encode-real`: where they come from, and how each one is prepared for the network.

Three kinds of source, each a list of items in a fixed order, so that sample i is the same image on a rerun:

* ``digits``: scikit-learn's handwritten digits, prepared by `pipeline.demo_model.digits_dataset`, the function
  the demo model was trained on (8x8, bilinear to the network's size, [-1, 1], grey RGB);
* ``classes``: an ImageNet-style folder, one sub-folder per class, named by WordNet id (``n01440764``, for the
  1000-class ImageNet models) or by class index (``207``); the classes are interleaved (the first image of each
  class, then the second of each ...), so that the first N items cover the classes evenly;
* ``captions``: a folder of images with a ``.txt`` caption beside each (``cat.jpg`` + ``cat.txt``), or a
  CSV/TSV/JSONL/Parquet table with an image-path column and a caption column (paths relative to the table);
* ``run``: the final images of a run of the same store (``run:<run_id>``), in index order, with each sample's
  seed, class or prompt and sample id: a generator's outputs, to be encoded at the same noise level as real
  images (so that their distributions are compared there, as FID compares a generator's outputs with real images
  in one feature extractor). Its images are the stored PNGs (uint8, as written), scaled to [-1, 1].

Image files are centre-cropped to a square and resized to the network's size with a Lanczos filter, as EDM's
``dataset_tool.py --transform=center-crop`` made ImageNet-64, then scaled to [-1, 1] as in training
(``x / 127.5 - 1``). An item whose problem shows in the listing (a class folder that names no class, an image
without a caption, a path to no file) is left out and reported in `Source.problems`; an image that cannot be
decoded is reported when it is read (`BadItem`), and skipped.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

__all__ = ["KINDS", "RUN", "BadItem", "Item", "Source", "SourceError", "open_source", "prepare_image"]

KINDS = ("digits", "classes", "captions", "run")
DIGITS = "digits"
RUN = "run"
RUN_PREFIX = "run:"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet")
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "file_name", "filename")
CAPTION_COLUMNS = ("caption", "text", "prompt")
_WNID = re.compile(r"^n\d{8}$")


class SourceError(ValueError):
    """A source that cannot be used at all (no such folder, no usable items, no caption column ...)."""


class BadItem(Exception):
    """One item that cannot be used; the message says why."""


@dataclass(frozen=True)
class Item:
    """One real image: `name` is how it is reported (a path relative to the source, or ``digit 17``)."""

    name: str
    class_id: int | None = None
    caption: str | None = None
    path: Path | None = None
    row: int | None = None  # the digits: row in the data set
    sample_id: str | None = None  # a run's sample: its id (and its seed and category below)
    seed: int | None = None
    category: str | None = None


@dataclass
class Source:
    kind: str
    where: str  # "digits" or the path given
    items: list[Item]
    problems: list[tuple[str, str]] = field(default_factory=list)  # (name, why) of items left out
    run: dict | None = None  # a run source: the run's id, model, kind, checkpoint hash, seed and image size
    store: object = field(default=None, repr=False)  # a run source: the `store.Store` it reads

    @property
    def conditioning(self) -> str:
        """"class" (digits, class folders, a class model's run) or "prompt" (captions, a text-to-image model's
        run): what the images come labelled with."""
        if self.kind == RUN:
            return "prompt" if any(i.caption is not None for i in self.items) else "class"
        return "prompt" if self.kind == "captions" else "class"

    @property
    def generated(self) -> bool:
        """Whether the images are a generator's outputs (a run source of any kind but `real`), not real images."""
        return self.kind == RUN and self.run is not None and self.run.get("kind") != "real"

    def identity(self) -> dict:
        """What the run's manifest records of its source; the listing's hash tells two sources apart. A run
        source is named by the run and what made it (not by its current length, so that encoding a run that has
        grown since resumes)."""
        if self.kind == RUN:
            return {"kind": RUN, **{k: self.run[k] for k in ("run_id", "model", "checkpoint_sha256", "seed")}}
        listing = json.dumps([[i.name, i.class_id, i.caption] for i in self.items], ensure_ascii=False)
        return {"kind": self.kind, "where": self.where, "items": len(self.items),
                "listing_sha256": hashlib.sha256(listing.encode()).hexdigest()}

    def load_many(self, items: list[Item], resolution: int) -> list[np.ndarray | BadItem]:
        """`load` of each item (a run source reads a batch's images in one pass); a BadItem in place of an
        item that cannot be used."""
        if self.kind != RUN:
            out = []
            for item in items:
                try:
                    out.append(self.load(item, resolution))
                except BadItem as exc:
                    out.append(exc)
            return out
        pngs = self.store.images([i.sample_id for i in items])
        return [_run_image(png, resolution) for png in pngs]

    def load(self, item: Item, resolution: int) -> np.ndarray:
        """The item as the network takes it: float32 (3, R, R) in [-1, 1]. Raises BadItem."""
        if item.row is not None:
            return _digits(resolution)[item.row]
        if self.kind == RUN:
            got = self.load_many([item], resolution)[0]
            if isinstance(got, BadItem):
                raise got
            return got
        try:
            from PIL import Image, UnidentifiedImageError

            with Image.open(item.path) as im:
                im.load()
                return prepare_image(im, resolution)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            raise BadItem(f"unreadable image ({_short(exc)})") from None


def prepare_image(image, resolution: int) -> np.ndarray:
    """A PIL image, centre-cropped to a square and resized to `resolution` with Lanczos (EDM's ImageNet-64
    preparation), as float32 (3, R, R) in [-1, 1]."""
    from PIL import Image

    rgb = image.convert("RGB")
    w, h = rgb.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = rgb.crop((left, top, left + side, top + side))
    if side != resolution:
        square = square.resize((resolution, resolution), Image.Resampling.LANCZOS)
    array = np.asarray(square, dtype=np.float32)
    return (array / 127.5 - 1.0).transpose(2, 0, 1).copy()


def _run_image(png: bytes | None, resolution: int) -> np.ndarray | BadItem:
    """A run's stored final image (PNG bytes) as float32 (3, R, R) in [-1, 1], exactly its pixel values; a
    BadItem when it is missing, unreadable or not R x R (no resizing: a generated image is used as it is)."""
    if png is None:
        return BadItem("no final image in the store")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(png)) as im:
            rgb = im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return BadItem(f"unreadable image ({_short(exc)})")
    if rgb.size != (resolution, resolution):
        return BadItem(f"image is {rgb.size[0]}x{rgb.size[1]} px, the network takes {resolution}x{resolution}")
    return (np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0).transpose(2, 0, 1).copy()


@cache
def _digits(resolution: int) -> np.ndarray:
    from pipeline.demo_model import digits_dataset

    images, _ = digits_dataset(resolution)
    return images.numpy()


def open_source(spec: str, *, kind: str | None = None, class_names: list[str] | None = None,
                image_column: str | None = None, caption_column: str | None = None,
                store: str | Path | None = None) -> Source:
    """The source `spec` names: ``digits``, a class folder, a caption folder, a caption table or
    ``run:<run_id>`` (a run of the store at `store`). `kind` forces one of KINDS (default: guessed: ``run:``, a
    table file, a folder with images at its top level (captions), or a folder of folders (classes); with
    ``kind="run"`` the spec is the run id, with or without ``run:``). `class_names` are the model's classes
    (their number bounds a class index; 1000 of them admit WordNet ids). Raises SourceError."""
    if kind is not None and kind not in KINDS:
        raise SourceError(f"unknown source kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == RUN or kind is None and spec.startswith(RUN_PREFIX):
        run_id = spec[len(RUN_PREFIX):] if spec.startswith(RUN_PREFIX) else spec
        return _run_source(run_id.strip(), store)
    if spec == DIGITS and kind in (None, DIGITS):
        return _digits_source()
    if kind == DIGITS:
        raise SourceError(f"--source-kind digits takes --images digits, not {spec!r}")
    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError(f"image source not found: {path} (give a folder, a caption table, or 'digits')")
    if path.is_file():
        if kind == "classes":
            raise SourceError(f"{path} is a file: a class source is a folder of class folders")
        return _caption_table(path, image_column, caption_column)
    files, folders = _listing(path)
    if kind is None:
        images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
        if images:
            kind = "captions"
        elif folders:
            kind = "classes"
        else:
            raise SourceError(f"{path}: no images, and no class folders (expected images with .txt captions "
                              "beside them, or one folder of images per class)")
    if kind == "captions":
        return _caption_folder(path)
    return _class_folder(path, folders, class_names)


def _run_source(run_id: str, root: str | Path | None) -> Source:
    """The committed samples of run `run_id` in the store at `root`, in index order."""
    from store import Store, schema

    if not run_id:
        raise SourceError("give the run to encode: --images run:<run_id>")
    if root is None:
        raise SourceError(f"run:{run_id} is a run of a store: give the store it is in")
    if not Path(root).is_dir():
        raise SourceError(f"run:{run_id}: no store at {root}")
    store = Store(root)
    manifest = store.manifest(run_id)
    if manifest is None:
        table = store.runs()
        runs = sorted(table["run_id"].astype(str)) if "run_id" in table else []
        shown = ", ".join(runs[:12]) + (" ..." if len(runs) > 12 else "")
        raise SourceError(f"unknown run {run_id!r} in {root}" + (f"; its runs: {shown}" if runs else ""))
    kind = schema.run_kind(manifest.get("settings"))
    origin = (manifest.get("settings") or {}).get("source")
    if isinstance(origin, dict) and origin.get("kind") == RUN:  # its images are another run's: encode that one
        raise SourceError(f"run {run_id!r} is already an encoded run (of {origin.get('run_id')!r}): encode that run "
                          "instead")
    frame = store.samples(run_ids=[run_id], columns=["sample_id", "index", "seed", "class_id", "prompt",
                                                     "category", "image_path", "width", "height"])
    if not len(frame):
        raise SourceError(f"run {run_id!r} has no samples in {root}")
    frame = frame.sort_values("index", kind="stable")
    has_image = frame["image_path"].notna()
    if not has_image.any():
        raise SourceError(f"run {run_id!r} has no images in {root}: nothing to encode")
    sizes = sorted({(int(w), int(h)) for w, h in zip(frame.loc[has_image, "width"], frame.loc[has_image, "height"],
                                                     strict=True)})
    if len(sizes) != 1 or sizes[0][0] != sizes[0][1]:
        raise SourceError(f"run {run_id!r} holds images of sizes {', '.join(f'{w}x{h}' for w, h in sizes)}: "
                          "a run source needs square images of one size")
    items, problems = [], []
    for row in frame.itertuples(index=False):
        name = str(row.sample_id)
        if not isinstance(row.image_path, str):
            problems.append((name, "no final image in the store"))
            continue
        prompt = row.prompt if isinstance(row.prompt, str) else None
        items.append(Item(name, class_id=None if _missing(row.class_id) else int(row.class_id), caption=prompt,
                          sample_id=name, seed=None if _missing(row.seed) else int(row.seed),
                          category=row.category if prompt is not None and isinstance(row.category, str) else None))
    run = {"run_id": run_id, "model": manifest.get("model"), "kind": kind,
           "checkpoint_sha256": manifest.get("checkpoint_sha256"), "seed": manifest.get("seed"),
           "image_size": sizes[0][0]}
    return Source(RUN, f"{RUN_PREFIX}{run_id}", items, problems, run=run, store=store)


def _missing(value) -> bool:
    return value is None or isinstance(value, float) and value != value or str(value) == "<NA>"


def _listing(folder: Path) -> tuple[list[Path], list[Path]]:
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise SourceError(f"cannot list {folder}: {_short(exc)}") from None
    visible = [p for p in entries if not p.name.startswith(".")]
    return [p for p in visible if p.is_file()], [p for p in visible if p.is_dir()]


def _digits_source() -> Source:
    from sklearn.datasets import load_digits

    targets = load_digits().target
    return Source(DIGITS, DIGITS, [Item(f"digit {i}", class_id=int(t), row=i) for i, t in enumerate(targets)])


def _class_index(name: str, class_names: list[str] | None) -> int | None:
    n = len(class_names) if class_names is not None else None
    if name.isdigit():
        index = int(name)
        return index if n is None or index < n else None
    if _WNID.match(name) and n in (None, 1000):
        from pipeline.imagenet_classes import NUM_CLASSES, class_wnid

        return {class_wnid(i): i for i in range(NUM_CLASSES)}.get(name)
    return None


def _class_folder(root: Path, folders: list[Path], class_names: list[str] | None) -> Source:
    problems: list[tuple[str, str]] = []
    per_class: list[list[Item]] = []
    n = len(class_names) if class_names is not None else None
    ids = {}
    for folder in folders:
        cid = _class_index(folder.name, class_names)
        if cid is None:
            what = f"class index 0..{n - 1}" if n else "class index"
            wnid = " or a WordNet id of an ImageNet class" if n in (None, 1000) else ""
            problems.append((f"{folder.name}/", f"unknown class folder: not a {what}{wnid}"))
            continue
        if cid in ids:
            problems.append((f"{folder.name}/", f"class {cid} again (also {ids[cid]}/): skipped"))
            continue
        try:
            files, _ = _listing(folder)
        except SourceError as exc:  # e.g. a folder this user may not read
            problems.append((f"{folder.name}/", str(exc)))
            continue
        ids[cid] = folder.name
        images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
        per_class.append([Item(f"{folder.name}/{f.name}", class_id=cid, path=f) for f in images])
    per_class.sort(key=lambda items: items[0].class_id if items else -1)
    # interleaved, so that the first N items cover the classes evenly
    items = [group[k] for k in range(max((len(g) for g in per_class), default=0)) for group in per_class
             if k < len(group)]
    if not items:
        raise SourceError(f"{root}: no images in any known class folder" + _problems_note(problems))
    return Source("classes", str(root), items, problems)


def _caption_folder(root: Path) -> Source:
    items, problems = [], []
    for f in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                     and not any(part.startswith(".") for part in p.relative_to(root).parts)):
        name = str(f.relative_to(root))
        caption_file = f.with_suffix(".txt")
        try:
            caption = caption_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            problems.append((name, f"missing caption (no {caption_file.name} beside it)"))
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.append((name, f"unreadable caption {caption_file.name} ({_short(exc)})"))
            continue
        if not caption:
            problems.append((name, f"missing caption ({caption_file.name} is empty)"))
            continue
        items.append(Item(name, caption=caption, path=f))
    if not items:
        raise SourceError(f"{root}: no images with a caption" + _problems_note(problems))
    return Source("captions", str(root), items, problems)


def _read_table(path: Path):
    import pyarrow as pa

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if suffix in (".jsonl", ".ndjson"):
            import pyarrow.json as pj

            return pj.read_json(path)
        if suffix in (".csv", ".tsv"):
            import pyarrow.csv as pcsv

            parse = pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",", newlines_in_values=True)
            return pcsv.read_csv(path, parse_options=parse,
                                 convert_options=pcsv.ConvertOptions(strings_can_be_null=True))
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"{path}: cannot read as {suffix.lstrip('.')} ({_short(exc)})") from None
    raise SourceError(f"{path}: unsupported caption table {suffix!r}; use one of {', '.join(TABLE_SUFFIXES)}")


def _column(table, given: str | None, candidates: tuple[str, ...], what: str, flag: str, path: Path) -> str:
    names = {n.strip().lower(): n for n in table.column_names}
    if given is not None:
        if given in table.column_names:
            return given
        if given.lower() in names:
            return names[given.lower()]
        raise SourceError(f"{path}: no column {given!r} ({flag}); columns: {', '.join(table.column_names)}")
    for c in candidates:
        if c in names:
            return names[c]
    raise SourceError(f"{path}: no {what} column (looked for {', '.join(candidates)}; name it with {flag}); "
                      f"columns: {', '.join(table.column_names) or '(none)'}")


def _caption_table(path: Path, image_column: str | None, caption_column: str | None) -> Source:
    table = _read_table(path)
    image_col = _column(table, image_column, IMAGE_COLUMNS, "image path", "--image-column", path)
    caption_col = _column(table, caption_column, CAPTION_COLUMNS, "caption", "--caption-column", path)
    first = 2 if path.suffix.lower() in (".csv", ".tsv") else 1  # CSV users count the header as line 1
    where = "line" if first == 2 else "row"
    items, problems = [], []
    for row, (image, caption) in enumerate(zip(table.column(image_col).to_pylist(),
                                               table.column(caption_col).to_pylist(), strict=True)):
        at = f"{where} {row + first}"
        if image is None or not str(image).strip():
            problems.append((f"{path.name} {at}", "no image path"))
            continue
        file = Path(str(image).strip()).expanduser()
        file = file if file.is_absolute() else path.parent / file
        name = f"{str(image).strip()} ({at})"
        text = "" if caption is None else str(caption).strip()
        if not text:
            problems.append((name, "missing caption"))
        elif not file.is_file():
            problems.append((name, f"no such image file: {file}"))
        else:
            items.append(Item(name, caption=text, path=file))
    if not items:
        raise SourceError(f"{path}: no rows with an image and a caption" + _problems_note(problems))
    return Source("captions", str(path), items, problems)


def _problems_note(problems: list[tuple[str, str]]) -> str:
    if not problems:
        return ""
    shown = "; ".join(f"{name}: {why}" for name, why in problems[:3])
    return f" ({len(problems)} left out: {shown}{' ...' if len(problems) > 3 else ''})"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
