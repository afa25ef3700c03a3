"""Prompt sets for the text-to-image generators: a file given by the user, or the built-in set.

Accepted files: plain text (one prompt per line, blank lines skipped), CSV/TSV, JSONL or Parquet with a
`prompt` column and an optional `category` column. The built-in set (`pipeline/data/prompts.csv`) has
500+ prompts across 20+ semantic categories, so maps can be coloured by category out of the box.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

BUILTIN = Path(__file__).parent / "data" / "prompts.csv"
UNCATEGORIZED = "uncategorized"
TEXT_SUFFIXES = (".txt", ".text", ".prompts")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet")


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message says why and where."""


@dataclass(frozen=True)
class PromptSet:
    prompts: tuple[str, ...]
    categories: tuple[str, ...]
    source: str  # "builtin" or the file path it was read from

    def __post_init__(self):
        if len(self.prompts) != len(self.categories):
            raise ValueError("prompts and categories differ in length")
        if not self.prompts:
            raise PromptFileError(f"{self.source}: no prompts")

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> tuple[str, str]:
        return self.prompts[index], self.categories[index]

    @property
    def sha256(self) -> str:
        """Content hash: two runs with different prompt sets never share a run id."""
        payload = json.dumps([self.prompts, self.categories], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    @classmethod
    def from_lists(cls, prompts, categories=None, source: str = "inline") -> PromptSet:
        prompts = list(prompts)
        categories = [UNCATEGORIZED] * len(prompts) if categories is None else list(categories)
        return _build(prompts, categories, source, first_row=1)

    @classmethod
    def load(cls, path: str | Path | None = None) -> PromptSet:
        """Read a prompt file; `None` gives the built-in set."""
        if path is None:
            ps = _read_table(BUILTIN)
            return cls(ps.prompts, ps.categories, "builtin")
        path = Path(path).expanduser()
        if not path.is_file():
            raise PromptFileError(f"prompt file not found: {path}")
        suffix = path.suffix.lower()
        if suffix in TABLE_SUFFIXES:
            return _read_table(path)
        if suffix in TEXT_SUFFIXES or suffix == "":
            return _read_text(path)
        raise PromptFileError(
            f"{path}: unsupported prompt file type {suffix!r}; use one of "
            f"{', '.join(TEXT_SUFFIXES + TABLE_SUFFIXES)}"
        )


def _read_text(path: Path) -> PromptSet:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"{path}: not UTF-8 text ({exc})") from exc
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise PromptFileError(f"{path}: no prompts (the file is empty or holds only blank lines)")
    return PromptSet(tuple(prompts), (UNCATEGORIZED,) * len(prompts), str(path))


def _read_table(path: Path) -> PromptSet:
    import pyarrow as pa

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        elif suffix in (".jsonl", ".ndjson"):
            import pyarrow.json as pj

            table = pj.read_json(path)
        else:
            import pyarrow.csv as pc

            parse = pc.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",", newlines_in_values=True)
            convert = pc.ConvertOptions(strings_can_be_null=False, column_types={
                "prompt": pa.string(), "category": pa.string(), "Prompt": pa.string(), "Category": pa.string()})
            table = pc.read_csv(path, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, OSError) as exc:
        raise PromptFileError(f"{path}: cannot read as {suffix.lstrip('.')} ({exc})") from exc
    columns = {name.strip().lower(): name for name in table.column_names}
    if "prompt" not in columns:
        raise PromptFileError(
            f"{path}: no 'prompt' column; columns found: {', '.join(table.column_names) or '(none)'}"
        )
    prompts = table.column(columns["prompt"]).to_pylist()
    categories = (table.column(columns["category"]).to_pylist() if "category" in columns
                  else [None] * len(prompts))
    # Row numbers in messages count data rows from 1; CSV users see the header as line 1, hence +1 there.
    return _build(prompts, categories, str(path), first_row=2 if suffix in (".csv", ".tsv") else 1)


def _build(prompts: list, categories: list, source: str, first_row: int) -> PromptSet:
    clean, empty = [], []
    for row, value in enumerate(prompts):
        text = "" if value is None else str(value).strip()
        if not text:
            empty.append(row + first_row)
        clean.append(text)
    if not clean:
        raise PromptFileError(f"{source}: no prompts")
    if empty:
        where = "lines" if first_row == 2 else "rows"
        shown = ", ".join(str(r) for r in empty[:10]) + (" ..." if len(empty) > 10 else "")
        raise PromptFileError(f"{source}: {len(empty)} empty prompt(s) at {where} {shown}")
    cats = [UNCATEGORIZED if c is None or not str(c).strip() else str(c).strip() for c in categories]
    return PromptSet(tuple(clean), tuple(cats), source)
