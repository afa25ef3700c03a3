"""pipeline.aligned: maps aligned across steps and layers keep sample identity, move less between
consecutive frames than independent UMAP fits, are cached under explicit keys and refuse bad requests."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pipeline import aligned
from pipeline.aligned import (
    AlignedError,
    AlignedParams,
    Cancelled,
    aligned_layers,
    aligned_steps,
    frame_displacement,
)
from pipeline.features import load_features
from tests.app_fixtures import build_app_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from store import Store

    return Store(build_app_store(tmp_path_factory.mktemp("aligned") / "store", per_run=80))


@pytest.fixture(scope="module")
def steps_map(store):
    aligned.clear_cache()
    return aligned_steps(store, "digits", "midblock", params={"n_epochs": 100})


def test_step_frames_hold_the_same_samples_in_the_same_order(store, steps_map):
    m = steps_map
    assert m.axis == "steps" and m.frames == (0, 1, 2) and m.source == "fit"
    assert m.xy.shape == (3, len(m.sample_ids), 2) and np.isfinite(m.xy).all()
    ids = load_features(store, "digits", "midblock", 0).sample_ids
    assert sorted(m.sample_ids) == sorted(ids)  # every sample is in every frame, once
    long = m.long()
    assert (long.groupby("frame")["sample_id"].apply(list).map(lambda x: x == list(m.sample_ids))).all()


def test_consecutive_frames_are_closer_than_independent_fits(store, steps_map):
    import umap

    m = steps_map
    indep = []
    for s in m.frames:
        f = load_features(store, "digits", "midblock", s)
        rows = [list(f.sample_ids).index(i) for i in m.sample_ids]
        indep.append(umap.UMAP(random_state=0, n_epochs=100).fit_transform(f.X[rows]))
    ours, theirs = frame_displacement(m.xy), frame_displacement(np.stack(indep))
    assert (ours < 0.5 * theirs).all(), (ours, theirs)
    # and not by collapsing: each frame still separates the classes (same-class neighbours in the map)
    labels = np.array([int(i.rsplit("-", 1)[-1]) % 10 for i in m.sample_ids])
    for f in range(len(m.frames)):
        d = np.linalg.norm(m.xy[f][:, None] - m.xy[f][None], axis=2)
        np.fill_diagonal(d, np.inf)
        assert (labels[d.argmin(axis=1)] == labels).mean() > 0.8


def test_cached_and_reopened_without_refit(store, steps_map, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("refitted")

    monkeypatch.setattr(aligned, "fit_aligned", boom)
    t0 = time.perf_counter()
    again = aligned_steps(store, "digits", "midblock", params={"n_epochs": 100})
    assert again.source == "cache" and again.key == steps_map.key
    aligned.clear_cache()  # a fresh process: from the store
    reopened = aligned_steps(store, "digits", "midblock", params={"n_epochs": 100})
    assert time.perf_counter() - t0 < 1.0
    assert reopened.source == "cache" and list(reopened.sample_ids) == list(steps_map.sample_ids)
    np.testing.assert_array_equal(reopened.xy, steps_map.xy)
    assert reopened.frames == steps_map.frames
    assert len(list((store.root / "caches" / "aligned").rglob("*.parquet"))) >= 1


def test_parameters_and_data_are_in_the_key(store, steps_map):
    from pipeline.aligned import aligned_key

    p = AlignedParams(n_epochs=100)
    base = aligned_key("steps", "digits", ["midblock"], [0, 1, 2], {"midblock": "v1"}, p, {})
    assert base != aligned_key("steps", "digits", ["midblock"], [0, 1, 2], {"midblock": "v2"}, p, {})
    assert base != aligned_key("steps", "digits", ["midblock"], [0, 1, 2], {"midblock": "v1"},
                               AlignedParams(n_epochs=100, alignment_regularisation=0.1), {})
    assert base != aligned_key("steps", "digits", ["midblock"], [0, 2], {"midblock": "v1"}, p, {})


def test_layers_in_forward_order_at_the_last_common_step(store):
    m = aligned_layers(store, "digits", params={"n_epochs": 60})
    assert m.axis == "layers" and m.frames == ("encoder_bottleneck", "midblock") and m.step == 2
    assert m.xy.shape[0] == 2 and np.isfinite(m.xy).all()


def test_bad_requests_are_clear_errors(store):
    with pytest.raises(AlignedError, match="only 1 step.*multi-step"):
        aligned_steps(store, "words", "mid_block")
    with pytest.raises(AlignedError, match="unknown layer"):
        aligned_steps(store, "digits", "nope")
    with pytest.raises(AlignedError, match="unknown model"):
        aligned_steps(store, "nope", "midblock")
    with pytest.raises(AlignedError, match="step 7 is not recorded"):
        aligned_steps(store, "digits", "midblock", steps=[0, 7])
    with pytest.raises(AlignedError, match="at least 2 layers"):
        aligned_layers(store, "digits", layers=["midblock"])
    with pytest.raises(AlignedError, match="not recorded by every layer"):
        aligned_layers(store, "digits", step=9)
    with pytest.raises(AlignedError, match="alignment_regularisation"):
        AlignedParams(alignment_regularisation=-1)
    with pytest.raises(AlignedError, match="unknown aligned-map parameter"):
        AlignedParams.coerce({"bogus": 1})


def test_progress_and_cancel(store):
    seen = []
    cancel = threading.Event()

    def progress(f, msg):
        seen.append((f, msg))
        if "epoch" in msg:
            cancel.set()

    with pytest.raises(Cancelled):
        aligned_steps(store, "digits", "encoder_bottleneck", params={"n_epochs": 50, "seed": 3},
                      progress=progress, cancel=cancel)
    assert seen and all(0 <= f <= 1 for f, _ in seen)
    assert not list((store.root / "caches" / "aligned" / "model=digits" / "layer=encoder_bottleneck").glob("*"))


def test_text_to_image_steps_and_layers(tmp_path_factory):
    """The tiny SDXL 4-step model: its four steps and its two layers align like the class models'."""
    import torch

    from pipeline.generate import generate
    from store import Store
    from tests.t2i_fixtures import build, tiny_files

    torch.set_num_threads(1)
    files = tiny_files(tmp_path_factory)
    root = tmp_path_factory.mktemp("aligned-t2i") / "store"
    generate(build(files, "sdxl-4step", seeds_per_prompt=3), root, 12, ["mid", "down1"], run_id="xl",
             batch_size=12, progress=False)
    store = Store(root)
    model = store.models()[0]
    steps = aligned_steps(store, model, "mid", params={"n_epochs": 50, "n_neighbors": 5})
    assert steps.frames == (0, 1, 2, 3) and steps.xy.shape == (4, 12, 2) and np.isfinite(steps.xy).all()
    layers = aligned_layers(store, model, params={"n_epochs": 50, "n_neighbors": 5})
    assert set(layers.frames) == {"mid", "down1"} and layers.step == 3


def test_runs_select_their_own_steps_and_samples(tmp_path):
    """A 3-step run beside a 1-step run: the step alignment keeps the 3-step run's samples (and says how many it
    left out); the 1-step run alone is refused with a clear message."""
    from store import Store
    from tests.app_fixtures import _write_class_run

    _write_class_run(tmp_path, "m", "multi", ("midblock",), 40, (14.6, 2.5, 0.3), seed=1)
    _write_class_run(tmp_path, "m", "single", ("midblock",), 20, (1.0,), seed=2)
    store = Store(tmp_path)
    both = aligned_steps(store, "m", "midblock", params={"n_epochs": 30})
    assert both.frames == (0, 1, 2) and len(both) == 40 and both.meta["dropped"] == 20
    assert all(s.startswith("multi-") for s in both.sample_ids)
    with pytest.raises(AlignedError, match="only 1 step"):
        aligned_steps(store, "m", "midblock", run_ids=["single"])
    with pytest.raises(AlignedError, match="unknown run"):
        aligned_steps(store, "m", "midblock", run_ids=["nope"])
    one = aligned_steps(store, "m", "midblock", run_ids=["multi"], params={"n_epochs": 30})
    assert one.frames == (0, 1, 2) and len(one) == 40


def test_by_default_the_frames_are_the_steps_every_multi_step_run_records(tmp_path):
    """A run that records only its last step (a teacher's 17, `--record-steps last`) beside a 3-step run: the
    union of their steps holds no sample at every step; the frames are the 3-step run's steps, its samples all
    kept. Two multi-step runs share the steps both record."""
    from store import Store
    from tests.app_fixtures import _write_class_run

    _write_class_run(tmp_path, "m", "multi", ("midblock",), 40, (14.6, 2.5, 0.3), seed=1)
    _write_class_run(tmp_path, "m", "teacher", ("midblock",), 20, (0.002,), seed=2, first_step=17)
    store = Store(tmp_path)
    assert sorted(store.steps("m", "midblock")["step"]) == [0, 1, 2, 17]
    maps = aligned_steps(store, "m", "midblock", params={"n_epochs": 30})
    assert maps.frames == (0, 1, 2) and len(maps) == 40 and maps.meta["dropped"] == 0  # none in these frames
    _write_class_run(tmp_path, "m", "longer", ("midblock",), 30, (14.6, 2.5, 0.3, 0.1, 0.01), seed=3)
    maps = aligned_steps(Store(tmp_path), "m", "midblock", params={"n_epochs": 30})
    assert maps.frames == (0, 1, 2) and len(maps) == 70
    with pytest.raises(AlignedError, match="not recorded"):
        aligned_steps(store, "m", "midblock", steps=[0, 5])
