"""What if (issue 13) on the text-to-image families, with the tiny SD v1.5 and SDXL models of t2i_fixtures.

The Editor rebuilds each generator from its run's manifest (checkpoint file, base-model folder, resolution,
dtype), conditions on prompts (the text encoders' outputs and pooled embeddings), and patches or steers a UNet
layer's latent-resolution map at the chosen steps of the 4-step model.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tests.t2i_fixtures import CATEGORIES, PROMPTS, build, tiny_files

LAYERS = ["mid", "down1"]
N = 8  # samples per run: two seeds of each of the four prompts


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_files(tmp_path_factory)


@pytest.fixture(scope="module")
def root(files, tmp_path_factory):
    """One store with a 1-step SD v1.5 run and 4-step SDXL runs, full UNet and LoRA (with x0 previews)."""
    from pipeline.generate import generate

    torch.set_num_threads(min(2, torch.get_num_threads()))
    root = tmp_path_factory.mktemp("edit-t2i")
    generate(build(files, "sd15", seeds_per_prompt=2), root, N, LAYERS, run_id="sd", batch_size=N,
             progress=False)
    generate(build(files, "sdxl-4step", seeds_per_prompt=2, x0_previews=True), root, N, LAYERS, run_id="xl",
             batch_size=N, progress=False)
    generate(build(files, "sdxl-4step-lora", seeds_per_prompt=2, x0_previews=True), root, N, LAYERS,
             run_id="lo", batch_size=N, progress=False)
    return root


@pytest.fixture(scope="module")
def editor(root):
    from pipeline.edit import Editor

    return Editor(root, device="cpu")


def image(root, sample_id, step=None) -> np.ndarray:
    from store import Store

    return np.asarray(Image.open(io.BytesIO(Store(root).image(sample_id, step=step))))


def rows(root, ids):
    from store import Store

    return Store(root).samples(sample_ids=ids).set_index("sample_id").loc[ids]


RUNS = {"sd15": "sd", "sdxl-4step": "xl", "sdxl-4step-lora": "lo"}


@pytest.mark.parametrize("model", list(RUNS))
def test_end_frames_alpha_zero_and_a_self_patch_are_the_parents_bit_for_bit(root, editor, model):
    run = RUNS[model]
    a, b = f"{run}-00000000", f"{run}-00000005"
    frames = editor.interpolate(a, b, 4)
    assert np.array_equal(image(root, frames[0]), image(root, a))
    assert np.array_equal(image(root, frames[-1]), image(root, b))
    assert not np.array_equal(image(root, frames[1]), image(root, a))
    steered = editor.steer(a, "mid", [f"{run}-00000002", f"{run}-00000003"], [f"{run}-00000006"], [0, 3])
    (patched,) = editor.patch(a, "mid", [a])
    assert np.array_equal(image(root, steered[0]), image(root, a))
    assert np.array_equal(image(root, patched), image(root, a))
    assert not np.array_equal(image(root, steered[1]), image(root, a))
    if model != "sd15":  # every step's x0 preview as well
        from store import Store

        assert sorted(Store(root).previews(steered[0])) == [0, 1, 2, 3]
        for step in range(3):
            assert np.array_equal(image(root, steered[0], step=step), image(root, a, step=step))


@pytest.mark.parametrize("model", list(RUNS))
def test_regenerate_with_another_prompt_changes_the_image(root, editor, model):
    run = RUNS[model]
    parent = f"{run}-00000001"  # the cat
    (same,) = editor.regenerate(parent)
    (ramen,) = editor.regenerate(parent, prompt=PROMPTS[2])
    (new,) = editor.regenerate(parent, prompt="a green bicycle", seed=99)
    assert np.array_equal(image(root, same), image(root, parent))
    assert not np.array_equal(image(root, ramen), image(root, parent))
    meta = rows(root, [ramen, new])
    assert meta["prompt"].tolist() == [PROMPTS[2], "a green bicycle"]
    assert meta["label"].tolist() == meta["prompt"].tolist()
    # a prompt of the run's set keeps its index and category; another has none
    assert meta["prompt_index"].iloc[0] == 2 and meta["category"].iloc[0] == CATEGORIES[2]
    assert np.isnan(meta["prompt_index"].iloc[1]) and meta["category"].isna().iloc[1]
    assert meta["seed"].iloc[1] == 99 and meta["class_id"].isna().all()
    assert f"prompt {PROMPTS[0]!r} -> {PROMPTS[2]!r}" == meta["edit_change"].iloc[0]
    assert "seed" in meta["edit_change"].iloc[1]
    # the same prompt again is the same sample: nothing added
    assert editor.regenerate(parent, prompt=PROMPTS[2]) == [ramen]


def test_regenerate_many_is_one_batch_and_equals_one_by_one(root):
    from pipeline.edit import Editor, GeneratorCache, Regeneration

    asks = [Regeneration("sd-00000002", prompt=PROMPTS[3]), Regeneration("xl-00000003", seed=5),
            Regeneration("sd-00000004", prompt=PROMPTS[0], seed=7)]
    messages: list[str] = []
    ids = Editor(root, device="cpu", progress=messages.append, generators=GeneratorCache()).regenerate_many(asks)
    assert [m for m in messages if "generating" in m] == ["regenerate: generating 2 samples",
                                                          "regenerate: generating 1 sample"]
    alone = [Editor(root, device="cpu").regenerate(a.sample_id, prompt=a.prompt, seed=a.seed)[0] for a in asks]
    assert alone == ids  # the same edits: found, not made again


def test_interpolation_mixes_text_outputs_and_pooled_embeddings(root, editor):
    (a,) = editor.parents(["xl-00000000"])
    adapter = editor.adapter(a)
    cat, car = (adapter.condition(prompt=p) for p in PROMPTS[:2])
    ia, ib = adapter.edit_inputs([1], [cat]), adapter.edit_inputs([2], [car])
    half = adapter.mix_inputs(ia, ib, 0.5)
    torch.testing.assert_close(half["embeds"], (ia["embeds"] + ib["embeds"]) / 2)
    torch.testing.assert_close(half["pooled"], (ia["pooled"] + ib["pooled"]) / 2)
    assert half["pooled"].shape == (1, 32) and not torch.equal(ia["pooled"], ib["pooled"])
    assert half["noise"].shape == (1, 4, 4, 8, 8)
    for s in range(4):  # each step's draw on the great circle: a Gaussian's norm, not a shrunken mix
        norm = half["noise"][0, s].norm()
        assert abs(norm - ia["noise"][0, s].norm()) < 0.15 * norm
        assert norm > 1.2 * ((ia["noise"][0, s] + ib["noise"][0, s]) / 2).norm()
    assert adapter.mix_inputs(ia, ib, 0.0) is ia and adapter.mix_inputs(ia, ib, 1.0) is ib
    frames = editor.interpolate("xl-00000000", "xl-00000002", 3)
    assert rows(editor.root, frames)["edit_frame"].tolist() == [0, 1, 2]


def test_sample_is_edit_inputs_then_sample_inputs(files):
    from pipeline.hooks import Recorder

    adapter = build(files, "sdxl-4step")
    conds = adapter.conditions(np.arange(3), 0)
    with Recorder(adapter.root, adapter.resolve_layers(["mid"])) as rec:
        direct = adapter.sample([4, 5, 6], conds, rec)
        first = rec.pop()
        again = adapter.sample_inputs(adapter.edit_inputs([4, 5, 6], conds), rec)
        second = rec.pop()
    assert np.array_equal(direct, again)
    assert [e["step"] for e in first["mid"]] == [0, 1, 2, 3]
    for x, y in zip(first["mid"], second["mid"], strict=True):
        assert np.array_equal(x["array"], y["array"])


def test_patch_and_steer_at_chosen_steps_of_the_4_step_model(root, editor):
    from store import Store

    parent, members = "xl-00000000", ["xl-00000004", "xl-00000005"]
    messages: list[str] = []
    editor.progress = messages.append
    try:
        late = editor.patch(parent, "mid", members, steps=[3])
        early = editor.patch(parent, "mid", members, steps=[0])
    finally:
        editor.progress = lambda _m: None
    assert any("recomputing the full activations of 2 samples at mid" in m for m in messages)
    ref = image(root, parent)
    assert not np.array_equal(image(root, late[0]), ref) and not np.array_equal(image(root, early[0]), ref)
    # patching only the last step leaves the earlier steps' x0 previews as they were
    for step in range(3):
        assert np.array_equal(image(root, late[0], step=step), image(root, parent, step=step))
    assert not np.array_equal(image(root, early[0], step=0), image(root, parent, step=0))
    # the map replaced is the layer's latent-resolution map, recorded as the rest of the network saw it
    acts = Store(root).activations("sdxl-4step", "mid", step=3, sample_ids=[late[0], *members])
    assert tuple(acts.layer_shape) == (64, 4, 4)
    mean = acts.matrix[1:].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(acts.matrix[0], mean, rtol=1e-2, atol=1e-2)
    meta = rows(root, late + early)
    assert meta["edit_steps"].tolist() == ["3", "0"] and set(meta["edit_layer"]) == {"mid"}
    assert set(meta["run_id"]) == {"edit-xl"} and set(meta["edit_set"]) == {",".join(members)}


def test_provenance_of_the_text_to_image_edit_runs(root, editor):
    from store import Store
    from store.verify import verify

    editor.steer("sd-00000003", "down1", ["sd-00000000"], ["sd-00000006"], [1])
    st = Store(root)
    for run, parent in (("sd", "sd15"), ("xl", "sdxl-4step")):
        manifest = st.manifest(f"edit-{run}")
        assert manifest["model"] == parent and manifest["settings"]["kind"] == "edit"
        assert manifest["settings"]["parent_run"] == run and list(manifest["layers"]) == LAYERS
    found = st.cursor().execute("SELECT count(*) FROM samples WHERE edit_parents = 'sd-00000003' "
                                "AND edit_op = 'steer'").fetchone()[0]
    assert found == 1
    report = verify(root)
    assert report.ok and not report.missing_refs, report.lines()


def test_the_command_on_a_text_to_image_store(root, capsys):
    from pipeline.__main__ import main

    assert main(["edit", "--store", str(root), "--quiet", "regenerate", "--sample", "sd-00000000",
                 "--prompt", PROMPTS[3]]) == 0
    out = capsys.readouterr().out.split()
    assert len(out) == 1 and rows(root, out)["prompt"].tolist() == [PROMPTS[3]]
    assert main(["edit", "--store", str(root), "--quiet", "steer", "--sample", "xl-00000001", "--layer", "mid",
                 "--from-set", "xl-00000002", "--to-set", "xl-00000006", "--alpha", "2,0"]) == 0
    steered = capsys.readouterr().out.split()
    assert rows(root, steered)["edit_alpha"].tolist() == [2.0, 0.0]
    assert np.array_equal(image(root, steered[1]), image(root, "xl-00000001"))
    assert main(["edit", "--store", str(root), "--quiet", "interpolate", "--from", "xl-00000001", "--to",
                 "xl-00000007", "--frames", "3"]) == 0
    frames = capsys.readouterr().out.split()
    assert rows(root, frames)["edit_frame"].tolist() == [0, 1, 2]
    for argv, message in [
        (["regenerate", "--sample", "sd-00000000", "--label", "3"],
         "model sd15 is conditioned on a prompt, not a class label: use --prompt"),
        (["regenerate", "--sample", "sd-00000000", "--prompt", "  "], "--prompt is empty"),
        (["patch", "--sample", "xl-00000000", "--layer", "mid", "--set", "xl-00000001", "--steps", "4"],
         "step 4 not in run xl: model sdxl-4step samples it in 4 steps (0..3)"),
        (["patch", "--sample", "sd-00000000", "--layer", "mid", "--set", "xl-00000001"],
         "the set mixes models: sd15 (0 samples), sdxl-4step (1 sample)"),
        (["interpolate", "--from", "sd-00000000", "--to", "xl-00000001"], "interpolate needs two samples of one run"),
        (["patch", "--sample", "sd-00000000", "--layer", "nope", "--set", "sd-00000001"],
         "unknown layer(s) nope for model 'sd15'"),
    ]:
        assert main(["edit", "--store", str(root), "--quiet", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("error:") == 1, err


def test_the_generator_source_says_where_it_loads_from_and_keys_the_cache(root, files):
    from pipeline.edit import Editor, GeneratorCache

    cache, messages = GeneratorCache(), []
    ed = Editor(root, device="cpu", generators=cache, progress=messages.append)
    (parent,) = ed.parents(["lo-00000000"])
    source = ed.generator_source(parent)
    assert (source.model, source.checkpoint, source.base_model) == ("sdxl-4step-lora", str(files.lora),
                                                                    str(files.sdxl))
    assert (source.steps, source.x0_previews, source.resolution, source.dtype) == (4, True, 16, "float32")
    assert source.key not in cache
    ed.adapter(parent)
    assert cache.keys() == [source.key]
    assert messages == [f"loading {source.describe()} for run lo"] and str(files.sdxl) in source.describe()
    again = Editor(root, device="cpu", generators=cache, progress=messages.append)
    assert again.adapter(again.parents(["lo-00000003"])[0]) is ed.adapter(parent) and len(messages) == 1


def test_a_guided_teacher_run_is_refused_by_its_own_family(files, tmp_path, capsys):
    """A teacher's run is stored under the student's key (sd15) but was sampled with guidance by the base UNet:
    the Editor rebuilds the teacher (not the student, whose images would not be its samples), which says that
    it has no edits."""
    from pipeline.__main__ import main
    from pipeline.adapters.t2i_teacher import build_teacher
    from pipeline.edit import Editor
    from pipeline.generate import generate
    from pipeline.prompts import PromptSet

    teacher = build_teacher("sd15-teacher", base_model=str(files.sd15), prompts=PromptSet.from_lists(PROMPTS),
                            device="cpu", dtype=torch.float32, steps=2)
    generate(teacher, tmp_path, 2, ["mid"], run_id="te", progress=False)
    editor = Editor(tmp_path, device="cpu")
    (parent,) = editor.parents(["te-00000001"])
    source = editor.generator_source(parent)
    assert parent.model == "sd15" and source.model == "sd15-teacher" and source.checkpoint is None
    assert dict(source.options)["steps"] == 2 and dict(source.options)["guidance"] == teacher.guidance
    assert main(["edit", "--store", str(tmp_path), "--quiet", "regenerate", "--sample", "te-00000001",
                 "--prompt", "a castle at night"]) == 2
    err = capsys.readouterr().err
    assert "are not supported for model 'sd15-teacher'" in err and "Traceback" not in err, err
