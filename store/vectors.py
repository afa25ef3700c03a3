"""Activation vectors: the `Activations` matrix a `Store` returns, and decoding the stored vector column.

Vectors are fixed-size binary, little-endian float16 (or float32 where a part's values exceed float16's
range, its `dtype` column says which): decoded with numpy straight from the Arrow buffers, never per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import schema


@dataclass(frozen=True)
class Activations:
    """One (model, layer, step) activation matrix, rows ordered by (run_id, index) like `sample_ids`."""

    sample_ids: np.ndarray  # str, (N,)
    matrix: np.ndarray  # float32, (N, D)
    shape: tuple  # stored vector shape before flattening, e.g. (768,) or (768, 4, 4)
    reduce: str  # 'mean' | 'pool4' | 'full'
    layer_shape: tuple  # the layer's (C, H, W)
    timestep: float | None  # of the first row (one run shares it); None for EDM models
    sigma: float | None
    model: str = ""
    layer: str = ""
    step: int = 0
    run_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    timesteps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))  # per row, NaN = null
    sigmas: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def empty(self) -> bool:
        return len(self.sample_ids) == 0


def empty_activations(model: str, layer: str, step: int) -> Activations:
    return Activations(np.zeros(0, dtype=object), np.zeros((0, 0), dtype=np.float32), (), "", (), None, None,
                       model, layer, step)


def assemble(chunks: list[tuple[str, pa.Table]], order_ids: pa.Array, model: str, layer: str,
              step: int, info: dict) -> Activations:
    """Stack the vectors of `chunks` into one float32 matrix ordered like `order_ids` (no per-row Python)."""
    dims: dict[int, set[str]] = {}
    for run, t in chunks:
        dims.setdefault(_vector_dim(t), set()).add(run)
    if len(dims) > 1:
        detail = "; ".join(f"{d} values: runs {sorted(r)}" for d, r in sorted(dims.items()))
        raise ValueError(f"{model}/{layer} has vectors of different sizes across runs ({detail}); "
                         "pass run_ids to read one kind at a time")
    dim = next(iter(dims))
    n = sum(t.num_rows for _, t in chunks)
    matrix = np.empty((n, dim), dtype=np.float32)
    row = 0
    for _, t in chunks:
        dtype = _vector_dtype(t)
        for chunk in t["vector"].chunks:
            k = len(chunk)
            matrix[row:row + k] = vectors_to_numpy(chunk, dtype).reshape(k, dim)  # casts while copying
            row += k
    ids = _concat(chunks, "sample_id").combine_chunks()
    if isinstance(ids, pa.DictionaryArray):
        ids = ids.dictionary_decode()
    pos = pc.index_in(ids, value_set=order_ids).to_numpy(zero_copy_only=False)
    sel = None
    if n > 1 and not np.all(np.diff(pos) > 0):
        perm = np.argsort(pos, kind="stable")
        first = np.ones(n, dtype=bool)
        first[1:] = np.diff(pos[perm]) != 0  # a sample written twice keeps one row
        sel = perm[first]
    first_t = chunks[0][1]

    def col(name, conv):
        return conv(_concat(chunks, name).to_numpy())

    timesteps = col("timestep", lambda v: v.astype(np.float32))
    sigmas = col("sigma", lambda v: v.astype(np.float32))
    sample_ids = ids.to_numpy(zero_copy_only=False).astype(object)
    run_ids = np.concatenate([np.full(t.num_rows, run, dtype=object) for run, t in chunks])
    if sel is not None:
        matrix, sample_ids, run_ids = matrix[sel], sample_ids[sel], run_ids[sel]
        timesteps, sigmas = timesteps[sel], sigmas[sel]
    ts0 = first_t["timestep"][0].as_py()
    sg0 = first_t["sigma"][0].as_py()
    return Activations(sample_ids, matrix, tuple(info.get("shape") or ()), info.get("reduce") or "",
                       tuple(info.get("layer_shape") or ()), ts0, sg0, model, layer, step, run_ids, timesteps, sigmas)


def _vector_dtype(t: pa.Table) -> str:
    if "dtype" not in t.column_names or t.num_rows == 0:
        return "float16"
    dtype = t["dtype"][0].as_py() or "float16"
    if dtype not in schema.VECTOR_DTYPES:
        raise ValueError(f"unknown vector dtype {dtype!r}; valid: {list(schema.VECTOR_DTYPES)}")
    return dtype


def _vector_dim(t: pa.Table) -> int:
    return t.schema.field("vector").type.byte_width // schema.VECTOR_DTYPES[_vector_dtype(t)]


def vectors_to_numpy(arr: pa.Array, dtype: str = "float16") -> np.ndarray:
    """The values of a binary vector column chunk as a flat numpy array (zero-copy for fixed-size binary)."""
    np_dtype = np.dtype("<f2" if dtype == "float16" else "<f4")
    n = len(arr)
    if pa.types.is_fixed_size_binary(arr.type):
        width = arr.type.byte_width
        return np.frombuffer(arr.buffers()[1], dtype=np_dtype, count=n * width // np_dtype.itemsize,
                             offset=arr.offset * width)
    # variable binary (what DuckDB hands a UDF): one contiguous data buffer between the first and last offset
    off_type = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=off_type, count=n + 1, offset=arr.offset * off_type().itemsize)
    data = arr.buffers()[2]
    if data is None:
        return np.zeros(0, dtype=np_dtype)
    return np.frombuffer(data, dtype=np_dtype, count=int(offsets[-1] - offsets[0]) // np_dtype.itemsize,
                         offset=int(offsets[0]))


def vector_values_udf(vector, dtype) -> pa.Array:
    """DuckDB function vector_values(vector BLOB, dtype VARCHAR) -> FLOAT[] (the decoded values)."""
    if isinstance(vector, pa.ChunkedArray):
        vector = vector.combine_chunks()
    if isinstance(dtype, pa.ChunkedArray):
        dtype = dtype.combine_chunks()
    kinds = {d for d in dtype.unique().to_pylist() if d is not None} or {"float16"}
    if len(kinds) == 1 and not pa.types.is_fixed_size_binary(vector.type) and vector.null_count == 0:
        kind = kinds.pop()
        size = schema.VECTOR_DTYPES[kind]
        values = vectors_to_numpy(vector, kind).astype(np.float32)
        off_type = np.int64 if pa.types.is_large_binary(vector.type) else np.int32
        off = np.frombuffer(vector.buffers()[1], dtype=off_type, count=len(vector) + 1,
                            offset=vector.offset * np.dtype(off_type).itemsize)
        return pa.ListArray.from_arrays(pa.array(((off - off[0]) // size).astype(np.int32)), pa.array(values))
    out = []  # mixed dtypes or nulls in one chunk: rare, decode row by row
    for blob, kind in zip(vector.to_pylist(), dtype.to_pylist(), strict=True):
        np_dtype = "<f4" if kind == "float32" else "<f2"
        out.append(None if blob is None else np.frombuffer(blob, dtype=np_dtype).astype(np.float32).tolist())
    return pa.array(out, pa.list_(pa.float32()))


def _concat(chunks: list[tuple[str, pa.Table]], name: str) -> pa.ChunkedArray:
    return pa.chunked_array([c for _, t in chunks for c in t[name].chunks], type=chunks[0][1].schema.field(name).type)


