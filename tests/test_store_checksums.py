"""Damaged parts whose footer is intact are detected on read (page checksums) and skipped with a warning,
never returned as data (issue 12, item 2)."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from store_fixtures import manifest, write_run

from store import Store
from store.footers import full_check

SAMPLES = "samples/model=demo/run_id=r1/part-00000004-00000007.parquet"
ENC = "activations/model=demo/layer=enc/run_id=r1/part-00000004-00000007.parquet"
IMAGES = "images/model=demo/run_id=r1/part-00000004-00000007.parquet"
IDS = [f"r1-{i:08d}" for i in range(8)]


@pytest.fixture
def root(tmp_path):
    write_run(tmp_path, "r1", n=8, batch_size=4)
    return tmp_path


def _footer_start(data: bytes) -> int:
    """Offset of the Parquet footer (file metadata): everything before it is pages."""
    return len(data) - 8 - int.from_bytes(data[-8:-4], "little")


def _flip_inside(path: Path, value: bytes, at: int = 10) -> None:
    """Change one byte of `value` where the file stores it, before the footer (which stays intact)."""
    data = bytearray(path.read_bytes())
    where = bytes(data).index(value)
    assert where + at < _footer_start(bytes(data))
    data[where + at] ^= 0xFF
    path.write_bytes(bytes(data))
    pq.read_metadata(path)  # the footer still parses


def test_damaged_samples_part_is_skipped_not_served(root):
    """A flipped byte inside a samples part's thumbnails decodes to a different thumbnail without any error
    (DuckDB does not check page checksums); the reader checks them and skips the part."""
    part = root / SAMPLES
    before = Store(root).samples(thumbs=True)
    thumb = pq.read_table(part, columns=["thumb"])["thumb"][0].as_py()
    _flip_inside(part, thumb)
    raw = pq.read_table(part, columns=["thumb"])["thumb"][0].as_py()  # no checksum check: silently wrong
    assert raw != thumb and len(raw) == len(thumb)

    st = Store(root)
    with pytest.warns(RuntimeWarning, match=r"skipping corrupt file .*part-00000004-00000007\.parquet"):
        df = st.samples(thumbs=True)
    assert st.skipped == [str(part)]
    assert df["sample_id"].tolist() == IDS[:4]
    good = before.set_index("sample_id")
    for row in df.itertuples():
        assert bytes(row.thumb) == bytes(good.loc[row.sample_id, "thumb"]) and row.seed == good.loc[row.sample_id, "seed"]
    assert st.thumbs(IDS[4:]) == [None] * 4
    # its batch is no longer committed: no activations, no images of it either
    assert st.activations("demo", "enc").sample_ids.tolist() == IDS[:4]
    assert st.image(IDS[5]) is None and st.image(IDS[1]) is not None
    assert st.cursor().execute("SELECT count(*) FROM samples").fetchone()[0] == 4


def test_damaged_activation_part_is_skipped_not_served(root):
    """A flipped byte inside a stored vector decodes to different values; the pyarrow read of the step
    verifies the page checksums and the part is skipped."""
    part = root / ENC
    before = Store(root).activations("demo", "enc", step=1)
    cell = pq.read_table(part, columns=["vector"])["vector"][5].as_py()  # a row of step 1
    _flip_inside(part, cell)
    st = Store(root)
    with pytest.warns(RuntimeWarning, match=r"skipping corrupt file .*layer=enc.*part-00000004-00000007"):
        a = st.activations("demo", "enc", step=1)
    assert st.skipped == [str(part)]
    assert a.sample_ids.tolist() == IDS[:4]
    np.testing.assert_array_equal(a.matrix, before.matrix[:4])
    assert len(st.activations("demo", "mid", step=1)) == 8  # the other layer is whole
    assert len(st.samples()) == 8  # the samples are fine; only this layer's vectors are missing


def test_damaged_images_part_is_skipped_not_served(root):
    part = root / IMAGES
    png = Store(root).image(IDS[6])
    _flip_inside(part, png, at=len(png) // 2)
    st = Store(root)
    with pytest.warns(RuntimeWarning, match=r"skipping corrupt file .*images.*part-00000004-00000007"):
        assert st.image(IDS[6]) is None
    assert st.image(IDS[2]) is not None and st.skipped == [str(part)]


@pytest.mark.parametrize("seed", range(12))
def test_random_bytes_inside_a_samples_part_are_never_served(root, seed):
    """The attack of issue 12: random bytes written inside the pages of a samples part (footer intact).
    Whatever they hit, the reader either skips the part with a warning or returns exactly the original rows."""
    part = root / SAMPLES
    before = Store(root).samples(thumbs=True).set_index("sample_id")
    data = bytearray(part.read_bytes())
    rng = random.Random(seed)
    at = rng.randrange(4, _footer_start(bytes(data)) - 8)
    for i in range(at, at + 8):
        data[i] = rng.randrange(256)
    part.write_bytes(bytes(data))
    st = Store(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = st.samples(thumbs=True).set_index("sample_id")
    if st.skipped:
        assert st.skipped == [str(part)] and any("skipping corrupt file" in str(w.message) for w in caught)
        assert df.index.tolist() == IDS[:4]
    else:
        assert df.index.tolist() == IDS
    for sid, row in df.iterrows():
        for col in df.columns:
            a, b = row[col], before.loc[sid, col]
            if isinstance(a, (bytes, np.ndarray, list)):
                assert bytes(a) == bytes(b) if isinstance(a, bytes) else list(a) == list(b)
            else:
                assert a == b or (a is None and b is None) or (a != a and b != b), (sid, col, a, b)


def test_writer_writes_page_checksums(root):
    """Every part the writer writes carries page checksums: a value changed inside it fails the check
    with a checksum error (not merely a decoding error)."""
    checks = {
        SAMPLES: pq.read_table(root / SAMPLES, columns=["thumb"])["thumb"][0].as_py(),
        ENC: pq.read_table(root / ENC, columns=["vector"])["vector"][0].as_py(),
        IMAGES: pq.read_table(root / IMAGES, columns=["png"])["png"][0].as_py(),
    }
    for rel, value in checks.items():
        assert full_check(root / rel) == ""
        _flip_inside(root / rel, value, at=len(value) // 2)
        assert "CRC" in full_check(root / rel) or "checksum" in full_check(root / rel).lower(), rel


def test_parts_without_page_checksums_still_read(root):
    """Parts written before checksums (or by another tool) have none: they read as before."""
    for rel in (SAMPLES, ENC, IMAGES):
        t = pq.read_table(root / rel)
        md = pq.read_metadata(root / rel)
        pq.write_table(t.replace_schema_metadata(t.schema.metadata), root / rel, write_page_checksum=False,
                       row_group_size=max(1, md.num_rows // max(1, md.num_row_groups)))
    st = Store(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert st.samples()["sample_id"].tolist() == IDS
        assert st.activations("demo", "enc", step=1).sample_ids.tolist() == IDS
        assert st.image(IDS[6]) is not None
    assert st.skipped == []


def test_a_part_is_checked_once_per_process_until_it_changes(root, monkeypatch):
    """The full check of a samples part (and of the run manifest that gives its run kind) runs on its first read
    only; a rewritten part is checked again."""
    import store.footers as footers

    calls = []
    real = footers.full_check
    monkeypatch.setattr(footers, "full_check", lambda p, md=None: calls.append(Path(p).name) or real(p, md))
    st = Store(root)
    for _ in range(3):
        st.samples()
        st.activations("demo", "enc")
    assert sorted(calls) == ["part-00000000-00000003.parquet", "part-00000004-00000007.parquet", "r1.parquet"]
    part = root / SAMPLES
    thumb = pq.read_table(part, columns=["thumb"])["thumb"][0].as_py()
    _flip_inside(part, thumb)
    calls.clear()
    with pytest.warns(RuntimeWarning, match="part-00000004-00000007"):
        assert len(st.samples()) == 4
    assert calls == ["part-00000004-00000007.parquet"]


def test_damaged_shape_columns_skip_the_part_instead_of_failing_the_read(root):
    """The shape of the matrix comes from the first row of a part: damage there skips that part too."""
    part = root / ENC.replace("part-00000004-00000007", "part-00000000-00000003")  # the first part
    md = pq.read_metadata(part)
    names = [md.schema.column(j).path for j in range(md.num_columns)]
    chunk = md.row_group(0).column(names.index("shape.list.element"))
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(part.read_bytes())
    data[start + chunk.total_compressed_size - 2] ^= 0xFF  # inside the chunk's last page, not its header
    part.write_bytes(bytes(data))
    st = Store(root)
    with pytest.warns(RuntimeWarning, match=r"skipping corrupt file .*layer=enc.*part-00000000-00000003"):
        a = st.activations("demo", "enc", step=1)  # step 1's row group is intact; step 0's shape is not
    assert a.sample_ids.tolist() == IDS[4:] and a.matrix.shape == (4, 8 * 4 * 4) and st.skipped == [str(part)]


def test_a_writer_checks_an_old_samples_part_once_and_a_replaced_or_fresh_one_again(root, monkeypatch):
    """Reopening a run (an edit run does it per edit) reads each samples part once per process; a part replaced
    since, or one whose mtime is within the racy window of its check, is read again, so damage is never missed."""
    import os

    import store.writer as writer

    reads = []
    real = writer.pq.ParquetFile
    monkeypatch.setattr(writer.pq, "ParquetFile", lambda *a, **k: reads.append(1) or real(*a, **k))
    monkeypatch.setattr(writer, "_COMMITTED", writer.LRU(max_items=100))
    part = root / SAMPLES
    old = part.stat().st_mtime_ns - 10 * writer.RACY_NS  # both parts written long ago
    for p in part.parent.glob("part-*.parquet"):
        os.utime(p, ns=(old, old))
    per_open = []
    for _ in range(3):
        reads.clear()
        assert writer.RunWriter(root, manifest("r1", num_samples=8), durable=False).done_indices().tolist() \
            == list(range(8))
        per_open.append(len(reads))
    assert per_open[0] - per_open[1] == 2 and per_open[1] == per_open[2]  # each of the two parts read once

    thumb = pq.read_table(part, columns=["thumb"])["thumb"][0].as_py()
    _flip_inside(part, thumb)  # damaged now, and fresh: its mtime moved
    reads.clear()
    with writer.RunWriter(root, manifest("r1", num_samples=8), durable=False) as w:
        assert w.done_indices().tolist() == [0, 1, 2, 3]  # the damaged batch is not done
    assert len(reads) > per_open[1]  # the replaced part was read again
