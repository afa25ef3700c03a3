"""Text-to-image runs through the shared generation path: per-step activations, prompts and text
embeddings in the store, resume without duplicates and per-sample determinism."""

import numpy as np
import pytest

from pipeline.generate import generate
from store import Store
from tests.t2i_fixtures import CATEGORIES, PROMPTS, build, tiny_files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_files(tmp_path_factory)


def test_four_step_run_lands_in_the_store_with_every_step(files, tmp_path):
    adapter = build(files, "sdxl-4step", seeds_per_prompt=2)
    layers = ["mid", "down_blocks.0", "up0.attn0"]
    result = generate(adapter, tmp_path, 5, layers, seed=7, batch_size=3, progress=False)
    assert result.generated == 5
    st = Store(tmp_path)
    assert st.models() == ["sdxl-4step"]
    for layer in layers:
        steps = st.steps("sdxl-4step", layer)
        assert list(steps.step) == [0, 1, 2, 3]
        assert list(steps.timestep) == [999.0, 749.0, 499.0, 249.0]
        np.testing.assert_allclose(steps.sigma, adapter.sigmas, rtol=1e-6)
    for step in range(4):
        acts = st.activations("sdxl-4step", "mid", step=step)
        assert acts.matrix.shape == (5, 64 * 4 * 4) and tuple(acts.layer_shape) == (64, 4, 4)
        assert acts.reduce == "full" and acts.timestep == [999, 749, 499, 249][step]
    first, last = (st.activations("sdxl-4step", "mid", step=s).matrix for s in (0, 3))
    assert not np.allclose(first, last)

    samples = st.samples(model="sdxl-4step")
    assert list(samples["index"]) == [0, 1, 2, 3, 4]
    assert list(samples.prompt_index) == [0, 0, 1, 1, 2]
    assert list(samples.prompt) == [PROMPTS[i] for i in (0, 0, 1, 1, 2)]
    assert list(samples.category) == [CATEGORIES[i] for i in (0, 0, 1, 1, 2)]
    assert list(samples.label) == list(samples.prompt)
    assert samples.class_id.isna().all() and (samples.num_steps == 4).all()
    assert (samples.width == 16).all() and (samples.height == 16).all()

    frame, emb = st.text_embeddings("sdxl-4step")
    assert list(frame.prompt) == PROMPTS and list(frame.category) == CATEGORIES
    assert emb.shape == (len(PROMPTS), 32) and np.abs(emb).sum() > 0
    run = st.runs().iloc[0]
    assert run.family == "sdxl" and run.base_model == str(files.sdxl) and run.status == "complete"


def _images_and_acts(root, model, layer, steps):
    st = Store(root)
    samples = st.samples(model=model)
    images = dict(zip(samples.sample_id, st.images(samples.sample_id.tolist()), strict=True))
    acts = {}
    for step in range(steps):
        a = st.activations(model, layer, step=step)
        acts.update({(sid, step): row for sid, row in zip(a.sample_ids, a.matrix, strict=True)})
    return samples, images, acts


def test_resumed_runs_equal_one_run(files, tmp_path):
    one, resumed = tmp_path / "one", tmp_path / "resumed"
    layers = ["mid", "down0"]
    generate(build(files, "sdxl"), one, 5, layers, seed=3, batch_size=5, progress=False)
    generate(build(files, "sdxl"), resumed, 2, layers, seed=3, batch_size=2, progress=False)
    again = generate(build(files, "sdxl"), resumed, 5, layers, seed=3, batch_size=2, progress=False)
    assert again.generated == 3 and again.total_done == 5
    a_samples, a_images, a_acts = _images_and_acts(one, "sdxl", "mid", 1)
    b_samples, b_images, b_acts = _images_and_acts(resumed, "sdxl", "mid", 1)
    assert list(a_samples.sample_id) == list(b_samples.sample_id) and len(set(b_samples.sample_id)) == 5
    assert list(a_samples.seed) == list(b_samples.seed) and list(a_samples.prompt) == list(b_samples.prompt)
    assert a_images.keys() == b_images.keys()
    for sid in a_images:
        np.testing.assert_allclose(a_acts[(sid, 0)], b_acts[(sid, 0)], rtol=2e-3, atol=1e-4)  # float16 rounding
    # Identical pixels whatever the batch: CPU kernels may round a batch of 5 and of 2 differently in the
    # last float bit, so compare decoded images within one grey level.
    from io import BytesIO

    from PIL import Image

    for sid in a_images:
        x = np.asarray(Image.open(BytesIO(a_images[sid])), dtype=np.int16)
        y = np.asarray(Image.open(BytesIO(b_images[sid])), dtype=np.int16)
        assert np.abs(x - y).max() <= 1
    assert len({v for v in a_images.values()}) == 5  # different seeds/prompts give different images


def test_a_different_prompt_set_is_a_different_run(files, tmp_path):
    from pipeline.prompts import PromptSet

    generate(build(files, "sd15"), tmp_path, 1, ["mid"], seed=0, progress=False)
    other = PromptSet.from_lists(["a green apple", "a blue door"])
    generate(build(files, "sd15", prompts=other), tmp_path, 1, ["mid"], seed=0, progress=False)
    runs = Store(tmp_path).runs()
    assert len(runs) == 2 and runs.run_id.nunique() == 2
