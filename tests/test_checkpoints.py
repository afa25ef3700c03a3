"""Checkpoint resolution (local and hub, offline) and strict loading with clear errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipeline.checkpoints import (
    CheckpointMismatch,
    load_checkpoint,
    load_into,
    load_state_dict_file,
    parse_hub_ref,
    resolve_checkpoint,
    sha256_of,
)
from pipeline.models.edm import EDMPrecond
from tests.edm_fixtures import TINY_EDM

TINY = {**TINY_EDM, "label_dim": 4}
RUN = "imagenet_lr2e-6_scratch_fid2.61_checkpoint_model_405500"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def tiny(seed: int = 0) -> EDMPrecond:
    torch.manual_seed(seed)
    model = EDMPrecond(**TINY)
    for p in model.parameters():
        torch.nn.init.normal_(p)
    return model


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def fake_hub_cache(root: Path, repo_id: str, files: dict[str, dict]) -> Path:
    """Lay out a Hugging Face hub cache (models--owner--repo/{refs,snapshots}) as huggingface_hub writes it."""
    repo_dir = root / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    for rel, state in files.items():
        target = repo_dir / "snapshots" / COMMIT / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, target)
    return repo_dir / "snapshots" / COMMIT


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_local_bin_and_safetensors_files_load_strictly(tmp_path):
    src = tiny(1)
    torch.save(src.state_dict(), tmp_path / "pytorch_model.bin")
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "weights.safetensors")
    for name in ("pytorch_model.bin", "weights.safetensors"):
        dst = tiny(2)
        assert not same_weights(src, dst)
        assert load_checkpoint(dst, tmp_path / name) == tmp_path / name
        assert same_weights(src, dst)


def test_run_folder_prefers_safetensors_and_ignores_the_guidance_model(tmp_path):
    src = tiny(1)
    torch.save(tiny(3).state_dict(), tmp_path / "pytorch_model_1.bin")  # guidance model: never read
    torch.save(src.state_dict(), tmp_path / "pytorch_model.bin")
    assert resolve_checkpoint(tmp_path) == tmp_path / "pytorch_model.bin"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "model.safetensors")
    assert resolve_checkpoint(str(tmp_path)) == tmp_path / "model.safetensors"


def test_missing_local_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        resolve_checkpoint(tmp_path / "nope.bin")
    (tmp_path / "optimizer.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors, pytorch_model\.bin.*optimizer\.bin"):
        resolve_checkpoint(tmp_path)


@pytest.mark.parametrize("prefix", ["module.", "feedforward_model.", "feedforward_model.module."])
def test_wrapper_prefixes_are_stripped(tmp_path, prefix):
    src = tiny(1)
    torch.save({prefix + k: v for k, v in src.state_dict().items()}, tmp_path / "w.bin")
    state = load_state_dict_file(tmp_path / "w.bin")
    assert all(k.startswith("model.") for k in state)
    dst = load_into(tiny(2), state)
    assert same_weights(src, dst)


def test_pickled_code_is_refused(tmp_path):
    torch.save({"w": torch.zeros(1), "cfg": Path("x")}, tmp_path / "evil.bin")
    with pytest.raises(ValueError, match="weights-only"):
        load_state_dict_file(tmp_path / "evil.bin")


def test_mismatch_lists_missing_unexpected_and_shapes():
    state = tiny(1).state_dict()
    del state["model.out_conv.bias"]
    state["model.extra.weight"] = torch.zeros(2)
    state["model.map_label.weight"] = torch.zeros(32 * 4, 5)
    with pytest.raises(CheckpointMismatch) as info:
        load_into(tiny(2), state)
    msg = str(info.value)
    assert "1 missing keys" in msg and "model.out_conv.bias" in msg
    assert "1 unexpected keys" in msg and "model.extra.weight" in msg
    assert "model.map_label.weight: (64, 4) vs (128, 5)" in msg
    assert info.value.missing == ["model.out_conv.bias"]


def test_meta_model_takes_the_checkpoint_tensors(tmp_path):
    src = tiny(1)
    torch.save(src.state_dict(), tmp_path / "pytorch_model.bin")
    with torch.device("meta"):
        model = EDMPrecond(**TINY)
    load_checkpoint(model, tmp_path)
    assert not any(p.is_meta for p in model.parameters())
    assert same_weights(src, model)
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(model(x, 1.0, [2]), src(x, 1.0, [2]))


def test_parse_hub_ref():
    ref = parse_hub_ref(f"hf://tianweiy/DMD2/model/imagenet/{RUN}")
    assert (ref.repo_id, ref.path, ref.revision, ref.is_file) == (
        "tianweiy/DMD2",
        f"model/imagenet/{RUN}",
        None,
        False,
    )
    ref = parse_hub_ref("hf://tianweiy/DMD2@abc/dmd2_sdxl_4step_unet_fp16.safetensors")
    assert (ref.repo_id, ref.revision, ref.is_file) == ("tianweiy/DMD2", "abc", True)
    with pytest.raises(ValueError, match="owner and a repo"):
        parse_hub_ref("hf://tianweiy")


def test_hub_run_folder_resolves_offline_from_the_cache(offline_cache):
    src = tiny(1)
    snapshot = fake_hub_cache(
        offline_cache,
        "tianweiy/DMD2",
        {
            f"model/imagenet/{RUN}/pytorch_model.bin": src.state_dict(),
            f"model/imagenet/{RUN}/pytorch_model_1.bin": tiny(3).state_dict(),
        },
    )
    path = resolve_checkpoint(f"hf://tianweiy/DMD2/model/imagenet/{RUN}")
    assert path.resolve() == (snapshot / f"model/imagenet/{RUN}/pytorch_model.bin").resolve()
    dst = tiny(2)
    load_checkpoint(dst, f"hf://tianweiy/DMD2/model/imagenet/{RUN}/")
    assert same_weights(src, dst)
    # An explicit file inside the repo works the same way.
    assert (
        resolve_checkpoint(f"hf://tianweiy/DMD2/model/imagenet/{RUN}/pytorch_model_1.bin").name
        == "pytorch_model_1.bin"
    )


def test_hub_reference_not_in_cache_offline_says_so(offline_cache):
    fake_hub_cache(offline_cache, "tianweiy/DMD2", {"model/other/pytorch_model.bin": tiny(1).state_dict()})
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache.*HF_HUB_OFFLINE is set"):
        resolve_checkpoint(f"hf://tianweiy/DMD2/model/imagenet/{RUN}")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        resolve_checkpoint("hf://someone/unknown-repo/pytorch_model.bin")


def test_sha256_is_streamed_and_tracks_changes(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 100_000)
    assert sha256_of(f, chunk_size=4096) == hashlib.sha256(b"a" * 100_000).hexdigest()
    f.write_bytes(b"b" * 100_001)
    assert sha256_of(f) == hashlib.sha256(b"b" * 100_001).hexdigest()
