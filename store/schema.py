"""Arrow schemas of the files in a store (see docs/store-format.md).

Partition values (model, layer, run_id) are never columns in the files: they come from the folder names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa

FORMAT_VERSION = 2  # 2: images in one Parquet part per batch (1: one PNG file per image)

# -- the samples table: every column declared once, with its role -------------------------------------------

# What a column's values are. The consumers of the samples table take columns by role: the search relation,
# the exports and the app's tables take every plain value (`TABLE_ROLES`), keyword and regex searches look in
# the `TEXT_ROLES` columns, the map colours by the columns that declare a `color`.
SAMPLE_ROLES: dict[str, str] = {
    "id": "the sample's key",
    "group": "what the sample belongs to (model, run): partition values, from the folder names",
    "label": "a name people read (class name, category, display label): searched by keywords",
    "text": "free text (the prompt): searched by keywords",
    "numeric": "a number",
    "path": "a file inside the store",
    "ref": "keys of other samples or records (an edit's parents and sets): in tables and exports, not keyword-searched",
    "binary": "bytes (the thumbnail): never searched, exported or shown in a table",
    "list": "a list of values: never searched, exported or shown in a table",
}
TABLE_ROLES = ("id", "group", "label", "text", "numeric", "path", "ref")
TEXT_ROLES = ("label", "text")
COLOR_KINDS = ("category", "numeric")


@dataclass(frozen=True)
class SampleColumn:
    """One column of the samples table."""

    name: str
    type: pa.DataType
    role: str  # a key of SAMPLE_ROLES
    doc: str  # what it means (the Search page lists it)
    stored: bool = True  # False: a partition value (model=, run_id= folders), not a column of the files
    derived: bool = False  # not stored either: the reader derives it (from the run manifests), so old stores have it
    optional: bool = False  # added after the first stores: a part without it reads it as null
    given: bool = False  # a caller may give it per sample in `RunWriter.write_batch`
    color: str | None = None  # "category" or "numeric": the map can be coloured by it
    title: str = ""  # how the app names it (default: the name)

    def __post_init__(self):
        if self.role not in SAMPLE_ROLES:
            raise ValueError(f"samples column {self.name!r}: unknown role {self.role!r}; one of {list(SAMPLE_ROLES)}")
        if self.color is not None and self.color not in COLOR_KINDS:
            raise ValueError(f"samples column {self.name!r}: color must be one of {COLOR_KINDS}, got {self.color!r}")
        if self.color == "numeric" and self.role != "numeric" or self.color == "category" \
                and self.role not in ("group", "label"):
            raise ValueError(f"samples column {self.name!r}: a {self.role} column cannot colour as {self.color}")
        if self.derived and self.stored:
            raise ValueError(f"samples column {self.name!r}: a derived column is not stored (stored=False)")
        if not self.title:
            object.__setattr__(self, "title", self.name)


@dataclass(frozen=True)
class SampleVocabulary:
    """The samples columns in file order (partition values after the id), and what each consumer takes."""

    columns: tuple[SampleColumn, ...]

    def __post_init__(self):
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"samples columns declared twice: {sorted({n for n in names if names.count(n) > 1})}")
        if [c.name for c in self.columns if c.role == "id"] != names[:1]:
            raise ValueError("the samples table has one id column, declared first")

    def __getitem__(self, name: str) -> SampleColumn:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        """Every column a reader can ask for: the file columns and the partition values."""
        return tuple(c.name for c in self.columns)

    @property
    def arrow(self) -> pa.Schema:
        """The Arrow schema of a samples part (partition values are folder names, not columns)."""
        return pa.schema([(c.name, c.type) for c in self.columns if c.stored])

    @property
    def partitions(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if not c.stored and not c.derived)

    @property
    def derived(self) -> tuple[str, ...]:
        """Columns the reader derives at read time (never in the files, never given by a writer)."""
        return tuple(c.name for c in self.columns if c.derived)

    @property
    def table(self) -> tuple[str, ...]:
        """The plain values: what search holds, exports write and the app's tables show."""
        return tuple(c.name for c in self.columns if c.role in TABLE_ROLES)

    @property
    def text(self) -> tuple[str, ...]:
        """What keyword and regex searches look in."""
        return tuple(c.name for c in self.columns if c.role in TEXT_ROLES)

    @property
    def numeric(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.role == "numeric")

    @property
    def colors(self) -> dict[str, str]:
        """Columns the map can be coloured by: name -> "category" or "numeric"."""
        return {c.name: c.color for c in self.columns if c.color is not None}

    @property
    def optional(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.optional)

    @property
    def given(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.given)

    def with_column(self, column: SampleColumn) -> SampleVocabulary:
        """This vocabulary with one more column at the end (tests: what a new column reaches)."""
        return SampleVocabulary((*self.columns, column))


SAMPLE_VOCAB = SampleVocabulary((
    SampleColumn("sample_id", pa.string(), "id", "the key, '<run_id>-<index:08d>'"),
    SampleColumn("model", pa.string(), "group", "model key, e.g. demo, imagenet, sd15, sdxl-4step", stored=False),
    SampleColumn("run_id", pa.string(), "group", "the run", stored=False, color="category", title="run"),
    SampleColumn("index", pa.int64(), "numeric", "position in the run, 0-based", color="numeric",
                 title="index in run"),
    SampleColumn("seed", pa.int64(), "numeric", "per-sample noise seed", given=True, color="numeric"),
    SampleColumn("class_id", pa.int32(), "numeric", "class index (class models; NULL for prompts)", given=True),
    SampleColumn("class_name", pa.string(), "label", "class name, e.g. 'golden retriever' (NULL for prompts)",
                 given=True),
    SampleColumn("prompt", pa.string(), "text", "text prompt (NULL for class models)", given=True),
    SampleColumn("prompt_index", pa.int32(), "numeric", "row of the prompt in the run's text embeddings",
                 given=True, color="numeric", title="prompt index"),
    SampleColumn("category", pa.string(), "label", "semantic category of the prompt, or the class", given=True,
                 color="category"),
    SampleColumn("label", pa.string(), "label", "what the UI shows: '207: golden retriever' or the prompt",
                 given=True, color="category"),
    SampleColumn("num_steps", pa.int16(), "numeric", "number of sampling steps", given=True, color="numeric",
                 title="sampling steps"),
    SampleColumn("image_path", pa.string(), "path",
                 "the images part holding the PNG (older stores: the PNG file), relative to the store"),
    SampleColumn("thumb", pa.binary(), "binary", "WebP thumbnail"),
    SampleColumn("width", pa.int32(), "numeric", "image width in pixels", color="numeric"),
    SampleColumn("height", pa.int32(), "numeric", "image height in pixels", color="numeric"),
    # Sampling steps with an x0 preview image beside the final one (null: none). Added after the first
    # stores were written: a samples part without this column has no previews.
    SampleColumn("preview_steps", pa.list_(pa.int16()), "list",
                 "sampling steps with an x0 preview image beside the final one (NULL: none)", optional=True),
    # Provenance of the samples of `edit` runs (pipeline/edit.py); NULL for generated samples. Added after
    # the first stores: a part without these columns reads them as NULL.
    *(SampleColumn(name, typ, role, doc, optional=True, given=True, **extra) for name, typ, role, doc, extra in (
        ("edit_op", pa.string(), "label", "edit operation: regenerate, interpolate, patch or steer (NULL: "
         "a generated sample)", dict(color="category", title="edit")),
        ("edit_parents", pa.string(), "ref", "the edit's parent sample id(s), comma-separated", {}),
        ("edit_layer", pa.string(), "label", "layer the edit acted on (patch, steer)", {}),
        ("edit_steps", pa.string(), "label", "sampling steps the edit acted at, comma-separated", {}),
        ("edit_set", pa.string(), "ref", "sample ids of the patch's set, or of the steer's target set (B)", {}),
        ("edit_from_set", pa.string(), "ref", "sample ids of the steer's source set (A)", {}),
        ("edit_alpha", pa.float32(), "numeric", "steering strength alpha", dict(color="numeric", title="alpha")),
        ("edit_frame", pa.int32(), "numeric", "interpolation frame, 0 = the first parent",
         dict(color="numeric", title="frame")),
        ("edit_change", pa.string(), "label", "the changed condition, e.g. 'label 3 -> 8', 'seed 1 -> 2'", {}),
        ("edit_key", pa.string(), "ref", "the edit's identity, a hash of its inputs: asking for the same "
         "edit again adds nothing", {}),
    )),
    # Provenance of the samples of `encoded` runs (a run's final images through the network, pipeline/real.py):
    # the generated sample each one encodes. Added after the first stores: a part without it reads it as NULL.
    SampleColumn("source_sample_id", pa.string(), "ref", "the generated sample whose final image this one encodes "
                 "(runs of kind encoded; NULL otherwise)", optional=True, given=True, title="source sample"),
    # Derived when read, from the run's manifest (`run_kind` below), so every store has it, old ones included.
    SampleColumn("run_kind", pa.string(), "group", "what the run's samples are: generated, real (real images "
                 "encoded), encoded (a run's generated images encoded), edit, teacher or student; from the run's "
                 "manifest", stored=False, derived=True, color="category",
                 title="run kind"),
))

SAMPLES = SAMPLE_VOCAB.arrow
# Every column a reader can ask for, partition values (model, run_id) included.
SAMPLE_COLUMNS = SAMPLE_VOCAB.names

# Sample columns that older parts may lack; readers give them as null.
SAMPLE_OPTIONAL = SAMPLE_VOCAB.optional

# Fields a caller may give per sample in `RunWriter.write_batch`; the rest is filled in by the writer.
SAMPLE_INPUT_FIELDS = SAMPLE_VOCAB.given

# DuckDB's names of the Arrow types above (the search sandbox lists its columns with them).
DUCKDB_TYPES = {
    pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.int16(): "SMALLINT",
    pa.float32(): "FLOAT", pa.float64(): "DOUBLE", pa.binary(): "BLOB", pa.list_(pa.int16()): "SMALLINT[]",
}

# One row per PNG of a batch: the final image (step null) and the x0 preview of each step, ordered by
# (index, step) with the final image first; row groups of whole samples, about 1 MiB each, so that a reader
# fetches one image without reading a batch of large images.
IMAGES = pa.schema(
    [
        ("sample_id", pa.string()),
        ("index", pa.int64()),
        ("step", pa.int16()),
        ("png", pa.binary()),
    ]
)

ACTIVATION_META = pa.schema(
    [
        ("sample_id", pa.string()),
        ("step", pa.int16()),
        ("timestep", pa.float32()),
        ("sigma", pa.float32()),
        ("reduce", pa.string()),
        ("shape", pa.list_(pa.int32())),
        ("layer_shape", pa.list_(pa.int32())),
    ]
)

REDUCTIONS = ("mean", "pool4", "full")
FLOAT16_MAX = 65504.0
VECTOR_DTYPES = {"float16": 2, "float32": 4}  # dtype column value -> bytes per value (little-endian)


def activations_schema(dim: int, dtype: str = "float16") -> pa.Schema:
    """Activation part schema for vectors of `dim` values.

    `vector` is one fixed-size binary value per row: the `dim` values, little-endian, of type `dtype`
    (float16; float32 only for a part whose values overflow float16). A binary cell rather than a list
    of halffloats: Parquet list columns encode a repetition level per value, which made writes ~8x
    and reads ~4x slower (see docs/store-format.md).
    """
    return ACTIVATION_META.append(pa.field("dtype", pa.string())).append(
        pa.field("vector", pa.binary(dim * VECTOR_DTYPES[dtype]), nullable=False)
    )


RUNS = pa.schema(
    [
        ("run_id", pa.string()),
        ("model", pa.string()),
        ("family", pa.string()),
        ("checkpoint", pa.string()),
        ("checkpoint_sha256", pa.string()),
        ("base_model", pa.string()),
        ("layers", pa.list_(pa.string())),
        ("reduce", pa.string()),
        ("settings", pa.string()),
        ("seed", pa.int64()),
        ("num_samples", pa.int64()),
        ("num_done", pa.int64()),
        ("status", pa.string()),
        ("code_version", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("updated_at", pa.timestamp("us", tz="UTC")),
        ("device", pa.string()),
        ("format_version", pa.int32()),
    ]
)

RUN_STATUSES = ("running", "complete", "interrupted")

# What a run's samples are (the samples' derived `run_kind`): `settings.kind` in its manifest, which the runs
# that are not generated samples of the model set (pipeline/real.py, pipeline/edit.py, the teachers); a run
# without it, or without a manifest, holds generated samples.
GENERATED_KIND = "generated"
# `encoded`: the final images of another run put through the network at one noise level, like real images
# (pipeline/real.py), so that generated outputs and real images are compared at the same noise level.
RUN_KINDS = (GENERATED_KIND, "real", "edit", "teacher", "student", "encoded")


def run_kind(settings) -> str:
    """The kind of a run from its manifest's settings (a dict, its JSON text, or None)."""
    if isinstance(settings, (str, bytes)):
        try:
            settings = json.loads(settings)
        except ValueError:
            return GENERATED_KIND
    kind = settings.get("kind") if isinstance(settings, dict) else None
    return str(kind) if isinstance(kind, str) and kind else GENERATED_KIND
# Fields that make a run what it is: reopening a run with different values is an error.
IDENTITY_FIELDS = ("model", "checkpoint_sha256", "layers", "reduce", "settings", "seed")
JSON_FIELDS = ("reduce", "settings")

TEXT_EMBEDDINGS_META = pa.schema(
    [
        ("prompt_index", pa.int32()),
        ("prompt", pa.string()),
        ("category", pa.string()),
    ]
)


def text_embeddings_schema(dim: int) -> pa.Schema:
    # Few rows: a plain list of halffloats keeps it readable as FLOAT[] in DuckDB.
    return TEXT_EMBEDDINGS_META.append(pa.field("embedding", pa.list_(pa.field("item", pa.float16()), dim)))


# Columns a file must have for a reader to use it (a file without them is skipped as corrupt).
REQUIRED = {
    "samples": ("sample_id", "index"),
    "images": ("sample_id", "index", "step", "png"),
    "activations": ("sample_id", "step", "dtype", "vector"),
    "runs": ("run_id", "model", "status"),
    "text_embeddings": ("prompt_index", "embedding"),
}
