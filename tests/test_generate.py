"""Generation: determinism per sample seed, resume without duplicates, steps and sigmas in the store."""

import io
import time

import numpy as np
import pytest
from PIL import Image

from pipeline.adapters import UnknownLayer
from pipeline.generate import BackgroundWriter, _batches, generate
from store import Store
from tests.edm_fixtures import tiny_edm_adapter

LAYERS = ["encoder_bottleneck", "midblock", "dec.8x8_block0"]


def _by_sample(store, layer, step):
    acts = Store(store).activations("tiny", layer, step=step)
    return dict(zip(acts.sample_ids, acts.matrix, strict=True))


def _images(store, ids):
    return [np.asarray(Image.open(io.BytesIO(Store(store).image(sid)))) for sid in ids]


def test_sample_is_identical_in_one_run_and_after_resumes(tmp_path):
    one, resumed = tmp_path / "one", tmp_path / "resumed"
    generate(tiny_edm_adapter(), one, 9, LAYERS, seed=3, batch_size=2, progress=False)
    generate(tiny_edm_adapter(), resumed, 4, LAYERS, seed=3, batch_size=2, progress=False)
    result = generate(tiny_edm_adapter(), resumed, 9, LAYERS, seed=3, batch_size=2, progress=False)
    assert result.generated == 5 and result.total_done == 9

    a, b = Store(one).samples(model="tiny"), Store(resumed).samples(model="tiny")
    assert list(a.sample_id) == list(b.sample_id)            # same run id, same sample ids
    assert len(set(b.sample_id)) == 9                         # no duplicates
    assert list(a["class_id"]) == list(b["class_id"]) and list(a["seed"]) == list(b["seed"])
    for x, y in zip(_images(one, a.sample_id), _images(resumed, a.sample_id), strict=True):
        np.testing.assert_array_equal(x, y)
    for layer in LAYERS:
        for step in range(3):
            x, y = _by_sample(one, layer, step), _by_sample(resumed, layer, step)
            assert x.keys() == y.keys() and len(x) == 9
            for sid in x:
                np.testing.assert_array_equal(x[sid], y[sid])


def test_sample_does_not_depend_on_its_batch(tmp_path):
    """Noise and labels depend on (seed, index) only; what differs across batch sizes is the float
    rounding of batched kernels, far below what an image or a float16 activation can show."""
    one, other = tmp_path / "one", tmp_path / "other"
    generate(tiny_edm_adapter(), one, 6, ["midblock"], seed=1, batch_size=6, progress=False)
    generate(tiny_edm_adapter(), other, 6, ["midblock"], seed=1, batch_size=4, progress=False)
    ids = Store(one).samples(model="tiny").sample_id
    for x, y in zip(_images(one, ids), _images(other, ids), strict=True):
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 1
    x, y = _by_sample(one, "midblock", 2), _by_sample(other, "midblock", 2)
    for sid in ids:
        np.testing.assert_allclose(x[sid], y[sid], rtol=2e-3, atol=2e-3)


def test_rerun_with_nothing_missing_generates_nothing(tmp_path):
    generate(tiny_edm_adapter(), tmp_path, 4, ["midblock"], batch_size=4, progress=False)
    again = generate(tiny_edm_adapter(), tmp_path, 4, ["midblock"], batch_size=4, progress=False)
    assert again.generated == 0 and again.total_done == 4
    runs = Store(tmp_path).runs()
    assert list(runs.status) == ["complete"] and int(runs.num_done.iloc[0]) == 4


def test_steps_sigmas_and_shapes_land_in_the_store(tmp_path):
    generate(tiny_edm_adapter(), tmp_path, 3, LAYERS, batch_size=2, progress=False, reduce="full")
    st = Store(tmp_path)
    steps = st.steps("tiny", "midblock")
    assert list(steps.step) == [0, 1, 2]
    np.testing.assert_allclose(steps.sigma, [80.0, 5.0, 0.5])
    acts = st.activations("tiny", "midblock", step=1)
    assert acts.matrix.shape == (3, 32 * 4 * 4) and acts.matrix.dtype == np.float32
    assert tuple(acts.layer_shape) == (32, 4, 4) and acts.reduce == "full"
    samples = st.samples(model="tiny")
    assert samples.label.str.match(r"^\d: \w+$").all()
    assert (samples.num_steps == 3).all()


def test_samples_per_class_and_class_ids(tmp_path):
    adapter = tiny_edm_adapter(samples_per_class=2, class_ids=[7, 3])
    generate(adapter, tmp_path, 4, ["midblock"], progress=False)
    samples = Store(tmp_path).samples(model="tiny")
    assert list(samples.class_id) == [7, 7, 3, 3]
    assert list(samples.label) == ["7: seven", "7: seven", "3: three", "3: three"]


def test_unknown_layer_lists_the_valid_ones(tmp_path):
    with pytest.raises(UnknownLayer, match="valid layers: .*midblock"):
        generate(tiny_edm_adapter(), tmp_path, 2, ["nope"], progress=False)


def test_batches_split_only_consecutive_indices():
    todo = np.array([0, 1, 2, 3, 4, 7, 8, 11])
    assert [b.tolist() for b in _batches(todo, 2)] == [[0, 1], [2, 3], [4], [7, 8], [11]]
    assert _batches(np.array([], dtype=np.int64), 4) == []


class _SlowWriter:
    def __init__(self, fail_at=None):
        self.batches, self.fail_at = [], fail_at

    def write_batch(self, indices, *rest):
        time.sleep(0.01)
        if self.fail_at is not None and indices[0] == self.fail_at:
            raise OSError("disk full")
        self.batches.append(list(indices))


@pytest.mark.parametrize("threaded", [True, False])
def test_background_writer_keeps_order_and_counts(threaded):
    sink = _SlowWriter()
    with BackgroundWriter(sink, threaded=threaded) as bg:
        for start in range(0, 12, 3):
            bg.write_batch(list(range(start, start + 3)), [], [], {})
        bg.close()
    assert sink.batches == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]] and bg.committed == 12


def test_background_writer_hands_a_write_error_to_the_generating_thread():
    sink = _SlowWriter(fail_at=3)
    with pytest.raises(OSError, match="disk full"), BackgroundWriter(sink, threaded=True) as bg:
        for start in range(0, 30, 3):
            bg.write_batch(list(range(start, start + 3)), [], [], {})
        bg.close()
    assert sink.batches == [[0, 1, 2]]  # nothing after the failed batch is written
