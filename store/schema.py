"""Arrow schemas of the files in a store (see docs/store-format.md).

Partition values (model, layer, run_id) are never columns in the files: they come from the folder names.
"""

from __future__ import annotations

import pyarrow as pa

FORMAT_VERSION = 2  # 2: images in one Parquet part per batch (1: one PNG file per image)

SAMPLES = pa.schema(
    [
        ("sample_id", pa.string()),
        ("index", pa.int64()),
        ("seed", pa.int64()),
        ("class_id", pa.int32()),
        ("class_name", pa.string()),
        ("prompt", pa.string()),
        ("prompt_index", pa.int32()),
        ("category", pa.string()),
        ("label", pa.string()),
        ("num_steps", pa.int16()),
        ("image_path", pa.string()),
        ("thumb", pa.binary()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        # Sampling steps with an x0 preview image beside the final one (null: none). Added after the first
        # stores were written: a samples part without this column has no previews.
        ("preview_steps", pa.list_(pa.int16())),
    ]
)

# Sample columns that older parts may lack; readers give them as null.
SAMPLE_OPTIONAL = ("preview_steps",)

# Fields a caller may give per sample in `RunWriter.write_batch`; the rest is filled in by the writer.
SAMPLE_INPUT_FIELDS = ("seed", "class_id", "class_name", "prompt", "prompt_index", "category", "label", "num_steps")

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


PROJECTION = pa.schema([("sample_id", pa.string()), ("x", pa.float32()), ("y", pa.float32())])

# Columns a file must have for a reader to use it (a file without them is skipped as corrupt).
REQUIRED = {
    "samples": ("sample_id", "index"),
    "images": ("sample_id", "index", "step", "png"),
    "activations": ("sample_id", "step", "dtype", "vector"),
    "runs": ("run_id", "model", "status"),
    "text_embeddings": ("prompt_index", "embedding"),
}
