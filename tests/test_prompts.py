"""Prompt sets: every accepted file format, the built-in set, and the errors users meet."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.prompts import UNCATEGORIZED, PromptFileError, PromptSet


def test_builtin_set_is_large_varied_and_categorised():
    ps = PromptSet.load(None)
    assert ps.source == "builtin"
    assert len(ps) >= 500
    cats = set(ps.categories)
    assert len(cats) >= 20 and UNCATEGORIZED not in cats
    assert len(set(ps.prompts)) == len(ps)  # no duplicates
    per_cat = {c: ps.categories.count(c) for c in cats}
    assert min(per_cat.values()) >= 15  # no token categories
    assert all(3 <= len(p.split()) <= 30 for p in ps.prompts)


def test_plain_text_one_prompt_per_line_skips_blank_lines(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a cat\n\n  a dog on a beach  \n\n", encoding="utf-8")
    ps = PromptSet.load(path)
    assert ps.prompts == ("a cat", "a dog on a beach")
    assert ps.categories == (UNCATEGORIZED, UNCATEGORIZED)
    assert ps.source == str(path)


def test_csv_with_category_quoted_commas_and_unicode(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt,category\n"a cat, sleeping",animals\nun café à Paris,cities\n42,numbers\n',
                    encoding="utf-8")
    ps = PromptSet.load(path)
    assert ps.prompts == ("a cat, sleeping", "un café à Paris", "42")
    assert ps.categories == ("animals", "cities", "numbers")


def test_csv_without_category_column_and_blank_categories(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("id,Prompt\n1,a cat\n2,a dog\n")
    assert PromptSet.load(a).categories == (UNCATEGORIZED, UNCATEGORIZED)
    b = tmp_path / "b.tsv"
    b.write_text("prompt\tcategory\na cat\t\na dog\tpets\n")
    assert PromptSet.load(b).categories == (UNCATEGORIZED, "pets")


def test_jsonl_and_parquet(tmp_path):
    rows = [{"prompt": "a red car", "category": "vehicles"}, {"prompt": "a blue boat", "category": None}]
    jl = tmp_path / "p.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pqf = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(rows), pqf)
    for path in (jl, pqf):
        ps = PromptSet.load(path)
        assert ps.prompts == ("a red car", "a blue boat")
        assert ps.categories == ("vehicles", UNCATEGORIZED)


def test_missing_prompt_column_lists_the_columns_found(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("text,category\na cat,animals\n")
    with pytest.raises(PromptFileError, match=r"no 'prompt' column; columns found: text, category"):
        PromptSet.load(path)
    pqf = tmp_path / "p.parquet"
    pq.write_table(pa.table({"caption": ["x"]}), pqf)
    with pytest.raises(PromptFileError, match="columns found: caption"):
        PromptSet.load(pqf)


def test_empty_prompts_are_reported_with_their_lines(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,category\na cat,animals\n,animals\n   ,x\na dog,y\n")
    with pytest.raises(PromptFileError, match=r"2 empty prompt\(s\) at lines 3, 4"):
        PromptSet.load(path)
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"prompt": "ok"}\n{"prompt": null}\n')
    with pytest.raises(PromptFileError, match=r"empty prompt\(s\) at rows 2"):
        PromptSet.load(jl)
    with pytest.raises(PromptFileError, match="empty prompt"):
        PromptSet.from_lists(["a", ""])


def test_files_without_prompts_and_bad_paths(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(PromptFileError, match="no prompts"):
        PromptSet.load(empty)
    header_only = tmp_path / "h.csv"
    header_only.write_text("prompt,category\n")
    with pytest.raises(PromptFileError, match="no prompts"):
        PromptSet.load(header_only)
    with pytest.raises(PromptFileError, match="not found"):
        PromptSet.load(tmp_path / "nope.txt")
    odd = tmp_path / "p.xlsx"
    odd.write_text("x")
    with pytest.raises(PromptFileError, match=r"unsupported prompt file type '.xlsx'; use one of .*\.csv"):
        PromptSet.load(odd)


def test_content_hash_tells_sets_apart():
    a = PromptSet.from_lists(["a cat", "a dog"])
    assert a.sha256 == PromptSet.from_lists(["a cat", "a dog"]).sha256
    assert a.sha256 != PromptSet.from_lists(["a dog", "a cat"]).sha256
    assert a.sha256 != PromptSet.from_lists(["a cat", "a dog"], ["x", "y"]).sha256
    assert a[1] == ("a dog", UNCATEGORIZED)
