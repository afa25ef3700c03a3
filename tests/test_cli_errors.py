"""Bad input and failing disks on the command line: argparse refuses bad numbers before anything is written;
unreadable checkpoints, a store path that is a file, a read-only store and a full disk get one line and exit
2 (a started run left `interrupted`, and resumable); a resumed run repairs a batch whose commit record is
damaged; a checkpoint that does not match is summarised, with the full lists in a file."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors.torch import save_file

from pipeline.__main__ import main
from store import Store
from store.verify import verify


def _generate(store: Path, checkpoint: Path, *extra: str) -> list[str]:
    return ["generate", "--model", "demo", "--checkpoint", str(checkpoint), "--store", str(store),
            "--layers", "midblock", "--quiet", *extra]


def _manifest(store: Path) -> dict:
    (path,) = (store / "runs").glob("*.parquet")
    return pq.read_table(path).to_pylist()[0]


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# -- 6. bad numbers ---------------------------------------------------------------------------------------

BAD_NUMBERS = [
    ("generate", "--batch-size", "-3"), ("generate", "--batch-size", "0"), ("generate", "--num-samples", "0"),
    ("generate", "--num-samples", "-5"), ("generate", "--seed", "-1"), ("generate", "--steps", "0"),
    ("generate", "--samples-per-class", "0"), ("generate", "--seeds-per-prompt", "0"),
    ("generate", "--resolution", "-64"), ("generate", "--class-ids", "1,-2"), ("generate", "--batch-size", "x"),
    ("demo", "--samples-per-class", "0"), ("demo", "--samples-per-class", "-1"),
    ("train-demo", "--minutes", "0"), ("train-demo", "--minutes", "-2"), ("train-demo", "--minutes", "nan"),
    ("train-demo", "--seed", "-1"),
    ("layers", "--resolution", "0"),
    ("project", "--n-neighbors", "1"), ("project", "--n-neighbors", "100000"), ("project", "--min-dist", "-0.5"),
    ("project", "--perplexity", "0"), ("project", "--pca", "0"), ("project", "--seed", "-1"),
]


@pytest.mark.parametrize(("command", "flag", "value"), BAD_NUMBERS, ids=lambda x: str(x))
def test_bad_numbers_are_refused_by_the_parser_and_nothing_is_written(tmp_path, capsys, demo_checkpoint,
                                                                      command, flag, value):
    store = tmp_path / "store"
    args = {
        "generate": _generate(store, demo_checkpoint, "--num-samples", "16"),
        "demo": ["demo", "--store", str(store)],
        "train-demo": ["train-demo", "--out", str(store / "w.safetensors"), "--minutes", "0.01"],
        "layers": ["layers", "--model", "sd15"],
        "project": ["project", "--store", str(store), "--model", "demo", "--layer", "midblock"],
    }[command]
    with pytest.raises(SystemExit) as info:
        main([*args, f"{flag}={value}"])  # argparse takes the last of a repeated flag
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument {flag}:" in err, err
    assert not store.exists()


def test_generate_refuses_bad_counts_before_writing(tmp_path, tiny_adapter):
    from pipeline.generate import generate

    for num, batch in ((0, 4), (-5, 4), (8, 0), (8, -3)):
        with pytest.raises(ValueError, match="must be a positive integer"):
            generate(tiny_adapter, tmp_path / "s", num, ["midblock"], batch_size=batch, progress=False)
    assert not (tmp_path / "s").exists()


def test_good_numbers_still_pass(tmp_path, capsys, demo_checkpoint):
    assert main(_generate(tmp_path, demo_checkpoint, "--num-samples", "3", "--batch-size", "2", "--seed", "0",
                          "--steps", "2", "--class-ids", "0,3")) == 0
    assert _manifest(tmp_path)["status"] == "complete" and _manifest(tmp_path)["num_done"] == 3


# -- 7. raw tracebacks ------------------------------------------------------------------------------------

def test_text_or_truncated_safetensors_is_one_line_and_exit_2(tmp_path, capsys, demo_checkpoint):
    text = tmp_path / "notes.safetensors"
    text.write_text("these are not weights\n")
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(demo_checkpoint.read_bytes()[: demo_checkpoint.stat().st_size // 2])
    for bad in (text, truncated):
        assert main(_generate(tmp_path / "store", bad, "--num-samples", "2")) == 2
        line = _one_line_error(capsys.readouterr().err)
        assert f"cannot read {bad} as a safetensors file" in line
    assert not (tmp_path / "store").exists()


def test_store_path_that_is_a_file_is_named_as_such(tmp_path, capsys, demo_checkpoint):
    (tmp_path / "file").write_text("x")
    for store, says in ((tmp_path / "file", "is a file"), (tmp_path / "file" / "sub", "which is a file")):
        assert main(_generate(store, demo_checkpoint, "--num-samples", "2")) == 2
        line = _one_line_error(capsys.readouterr().err)
        assert says in line and "manifest" not in line and "delete" not in line, line
        assert main(["demo", "--store", str(store), "--samples-per-class", "1"]) == 2
        assert says in _one_line_error(capsys.readouterr().err)
    assert (tmp_path / "file").read_text() == "x"


class _FailingWrites:
    """pyarrow's write_table raising what pyarrow raises on a full disk or a read-only file system (an OSError
    whose errno is only in its text): part files after the first `allow` of them, run manifests (runs/) after
    the first `allow_manifests`."""

    def __init__(self, monkeypatch, code: int, allow: int = 0, allow_manifests: float = float("inf")):
        self.real = pq.write_table
        self.code = code
        self.reset(allow, allow_manifests)
        monkeypatch.setattr(pq, "write_table", self)

    def reset(self, allow: int, allow_manifests: float) -> None:
        self.allow, self.allow_manifests, self.parts, self.manifests = allow, allow_manifests, 0, 0

    def __call__(self, table, where, **kw):
        if f"{os.sep}runs{os.sep}" in str(where):
            self.manifests += 1
            fail = self.manifests > self.allow_manifests
        else:
            self.parts += 1
            fail = self.parts > self.allow
        if fail:
            raise OSError(f"Failed to open local file '{where}'. Detail: [errno {self.code}] "
                          f"{os.strerror(self.code)}")
        return self.real(table, where, **kw)


def test_full_disk_mid_run_is_one_line_leaves_it_interrupted_and_it_resumes(tmp_path, capsys, monkeypatch,
                                                                           demo_checkpoint):
    args = _generate(tmp_path / "s", demo_checkpoint, "--num-samples", "12", "--batch-size", "4")
    disk = _FailingWrites(monkeypatch, errno.ENOSPC, allow=3)  # batch 1 (images, activations, samples)
    assert main(args) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "no space left" in line and "rerun the same command" in line
    m = _manifest(tmp_path / "s")
    assert m["status"] == "interrupted" and m["num_done"] == 4
    report = verify(tmp_path / "s")
    assert report.ok and not report.staging, report.lines()

    disk.reset(allow=0, allow_manifests=1)  # still full when the run records its status: the first error wins
    assert main(args) == 2
    assert "no space left" in _one_line_error(capsys.readouterr().err)
    assert disk.manifests == 2 and _manifest(tmp_path / "s")["status"] == "running"

    monkeypatch.undo()  # space freed
    assert main(args) == 0
    capsys.readouterr()
    m = _manifest(tmp_path / "s")
    assert m["status"] == "complete" and m["num_done"] == 12
    assert main(_generate(tmp_path / "clean", demo_checkpoint, "--num-samples", "12", "--batch-size", "4")) == 0
    got, want = Store(tmp_path / "s"), Store(tmp_path / "clean")
    a, b = got.activations("demo", "midblock"), want.activations("demo", "midblock")
    assert sorted(a.sample_ids) == sorted(b.sample_ids) and len(set(a.sample_ids)) == 12
    np.testing.assert_array_equal(a.matrix[np.argsort(a.sample_ids)], b.matrix[np.argsort(b.sample_ids)])
    assert verify(tmp_path / "s").ok


def test_read_only_store_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, demo_checkpoint):
    args = _generate(tmp_path / "s", demo_checkpoint, "--num-samples", "4", "--batch-size", "2")
    _FailingWrites(monkeypatch, errno.EROFS, allow_manifests=0)
    assert main(args) == 2
    assert "read-only file system" in _one_line_error(capsys.readouterr().err)
    assert not list((tmp_path / "s").rglob("*.parquet"))


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None and shutil.which("umount") is not None


@pytest.mark.skipif(not _can_mount(), reason="needs root and mount to make a real read-only file system")
def test_real_read_only_store(tmp_path, capsys, demo_checkpoint):
    """A tmpfs remounted read-only: refused before the model is loaded, in one line."""
    mnt = tmp_path / f"ro-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mount is not permitted here")
    try:
        args = _generate(mnt / "s", demo_checkpoint, "--num-samples", "2")
        assert main(args) == 0
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        before = sorted(p.name for p in (mnt / "s").rglob("*"))
        for cmd in (args, ["demo", "--store", str(mnt / "s"), "--samples-per-class", "1"]):
            assert main(cmd) == 2
            assert "read-only file system" in _one_line_error(capsys.readouterr().err)
        assert sorted(p.name for p in (mnt / "s").rglob("*")) == before
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# -- 8. a resumed run repairs what verify reports; mismatch summary ----------------------------------------

def _damage_pages(part: Path, column: str = "thumb") -> None:
    """Overwrite bytes inside one column's pages (the thumbnails: `index` still reads), footer intact."""
    meta = pq.read_metadata(part)
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    chunk = meta.row_group(0).column(names.index(column))
    first = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    start = first + chunk.total_compressed_size // 2
    data = bytearray(part.read_bytes())
    data[start:start + 16] = bytes(b ^ 0xFF for b in data[start:start + 16])
    part.write_bytes(bytes(data))
    pq.read_metadata(part)  # the footer still reads, and so does the commit's `index` column
    pq.ParquetFile(part).read(columns=["index"])


def test_resumed_demo_removes_orphans_and_regenerates_a_damaged_batch(tmp_path, capsys):
    store = tmp_path / "demo"
    assert main(["demo", "--store", str(store), "--samples-per-class", "1"]) == 0
    before = Store(store).activations("demo", "midblock", run_ids=["demo-1step"])
    (part,) = (store / "samples" / "model=demo" / "run_id=demo-1step").glob("*.parquet")
    _damage_pages(part)
    report = verify(store)
    assert report.orphans and [p for p, _ in report.corrupt] == [part.relative_to(store).as_posix()]
    text = "\n".join(report.lines())
    assert "generated again when its run resumes" in text

    assert main(["demo", "--store", str(store), "--samples-per-class", "1"]) == 0
    capsys.readouterr()
    report = verify(store)
    assert report.ok and not report.orphans and not report.corrupt, report.lines()
    after = Store(store).activations("demo", "midblock", run_ids=["demo-1step"])
    assert sorted(after.sample_ids) == sorted(before.sample_ids)
    np.testing.assert_array_equal(after.matrix[np.argsort(after.sample_ids)],
                                  before.matrix[np.argsort(before.sample_ids)])


def test_resumed_generate_repairs_only_the_damaged_batch(tmp_path, capsys, demo_checkpoint):
    args = _generate(tmp_path, demo_checkpoint, "--num-samples", "9", "--batch-size", "3")
    assert main(args) == 0
    parts = sorted((tmp_path / "samples").rglob("*.parquet"))
    kept = {p: p.stat().st_mtime_ns for p in (parts[0], parts[2])}
    _damage_pages(parts[1])
    assert main(args) == 0
    assert "3 samples" in capsys.readouterr().out  # only the damaged batch again
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert sorted(Store(tmp_path).samples(model="demo")["index"]) == list(range(9))


def test_wrong_key_checkpoint_is_summarised_with_the_full_list_in_a_file(tmp_path, capsys, demo_checkpoint):
    from safetensors.torch import load_file

    state = load_file(str(demo_checkpoint))
    wrong = tmp_path / "wrong.safetensors"
    save_file({"net." + k: v for k, v in state.items()}, wrong)
    assert main(_generate(tmp_path / "s", wrong, "--num-samples", "2")) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) <= 20, err
    assert "209 missing keys" in err and "209 unexpected keys" in err and "by prefix" in err
    assert "model.enc.* " in err and "net.model.* 209" in err
    full = Path(err.split("full lists: ")[1].split()[0])
    listed = full.read_text().splitlines()
    assert set(state) <= set(listed) and {"net." + k for k in state} <= set(listed)
    assert str(wrong) in err
    full.unlink()
    assert not (tmp_path / "s").exists()
