"""The on-disk store: Parquet parts written atomically, read through DuckDB (see docs/store-format.md)."""

from .layout import sample_id, split_sample_id
from .reader import Activations, Store
from .writer import ManifestMismatch, RunWriter

__all__ = ["Activations", "ManifestMismatch", "RunWriter", "Store", "sample_id", "split_sample_id"]
