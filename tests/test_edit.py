"""What if (issue 13, part 1): edits of stored samples on the demo model.

Mechanics: alpha = 0 and a patch with the sample's own activation reproduce the parent bit for bit, the
interpolation's end frames are the parents, results carry their provenance, the same edit twice adds nothing,
the command line prints the result ids and refuses what it cannot do with one line and exit 2.
Meaning, with the digit classifier of the demo quality test: steering from 3 towards 8 at the bottleneck
raises the probability of 8 with alpha; generating from the class-k neighbours of a class-k sample draws a k.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tests.digit_fixtures import digit_predictions, digit_probabilities

PER_CLASS = 20
LAYERS = ["encoder_bottleneck", "midblock"]
RUN = "demo-multistep"


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    """A demo store: the multi-step run (20 samples of each digit, x0 previews), two layers."""
    from pipeline.adapters.edm import load_demo
    from pipeline.generate import generate

    torch.set_num_threads(min(2, torch.get_num_threads()))
    root = tmp_path_factory.mktemp("edit-store")
    adapter = load_demo(torch.device("cpu"), samples_per_class=PER_CLASS, x0_previews=True)
    generate(adapter, root, 10 * PER_CLASS, LAYERS, run_id=RUN, batch_size=100, progress=False)
    return root


@pytest.fixture(scope="module")
def editor(store_root):
    from pipeline.edit import Editor

    return Editor(store_root, device="cpu")


def sid(index: int) -> str:
    return f"{RUN}-{index:08d}"


def of_class(k: int, n: int = PER_CLASS) -> list[str]:
    return [sid(k * PER_CLASS + j) for j in range(n)]


def image(root, sample_id: str, step=None) -> np.ndarray:
    from store import Store

    return np.asarray(Image.open(io.BytesIO(Store(root).image(sample_id, step=step))))


def rows(root, ids):
    from store import Store

    df = Store(root).samples(sample_ids=ids)
    return df.set_index("sample_id").loc[ids]


# -- mechanics ----------------------------------------------------------------------------------------------

def test_alpha_zero_and_a_self_patch_reproduce_the_parent_bit_for_bit(store_root, editor):
    from store import Store

    parent = sid(3 * PER_CLASS)
    steered = editor.steer(parent, "encoder_bottleneck", of_class(3, 5), of_class(8, 5), [0, 1])
    patched = editor.patch(parent, "encoder_bottleneck", [parent])
    assert np.array_equal(image(store_root, steered[0]), image(store_root, parent))
    assert np.array_equal(image(store_root, patched[0]), image(store_root, parent))
    assert not np.array_equal(image(store_root, steered[1]), image(store_root, parent))
    store = Store(store_root)
    # every layer of the parent's run at every step, as the parent recorded them: equal up to the last bits
    # that a batch of another size may round differently (float16 as stored); the images are exact
    for layer in LAYERS:
        for step in range(4):
            ours = store.activations("demo", layer, step=step, sample_ids=[parent, steered[0], patched[0]])
            assert ours.matrix.shape[0] == 3
            np.testing.assert_allclose(ours.matrix[1:], ours.matrix[[0, 0]], rtol=2e-3, atol=2e-3)
    previews = store.previews(steered[0])
    assert sorted(previews) == [0, 1, 2, 3] and previews == store.previews(parent)


def test_interpolation_ends_are_the_parents_and_the_frames_move_between(store_root, editor):
    a, b = sid(3 * PER_CLASS + 1), sid(8 * PER_CLASS + 1)
    frames = editor.interpolate(a, b, 5)
    assert len(frames) == 5 and len(set(frames)) == 5
    assert np.array_equal(image(store_root, frames[0]), image(store_root, a))
    assert np.array_equal(image(store_root, frames[-1]), image(store_root, b))
    middle = image(store_root, frames[2])
    assert not np.array_equal(middle, image(store_root, a)) and not np.array_equal(middle, image(store_root, b))
    meta = rows(store_root, frames)
    assert meta["edit_frame"].tolist() == [0, 1, 2, 3, 4]
    assert set(meta["edit_op"]) == {"interpolate"} and set(meta["edit_parents"]) == {f"{a},{b}"}


def test_regenerate_with_another_label_and_seed(store_root, editor):
    parent = sid(2 * PER_CLASS + 4)
    (same,) = editor.regenerate(parent)
    (other,) = editor.regenerate(parent, label=7, seed=12345)
    assert np.array_equal(image(store_root, same), image(store_root, parent))
    row = rows(store_root, [other]).iloc[0]
    assert row["class_id"] == 7 and row["seed"] == 12345 and row["edit_op"] == "regenerate"
    assert "label 2 -> 7" in row["edit_change"] and "seed" in row["edit_change"]
    assert digit_predictions(image(store_root, other)[None])[0] == 7


def test_provenance_rows_and_the_edit_run(store_root, editor):
    from store import Store

    parent = sid(5 * PER_CLASS + 2)
    set_a, set_b = of_class(5, 4), of_class(6, 4)
    ids = editor.steer(parent, "midblock", set_a, set_b, [2, 0.5], steps=[1, 2])
    (patched,) = editor.patch(parent, "encoder_bottleneck", set_b, steps=[0])
    meta = rows(store_root, [*ids, patched])
    assert meta["edit_op"].tolist() == ["steer", "steer", "patch"]
    assert meta["edit_alpha"].tolist()[:2] == [2.0, 0.5] and np.isnan(meta["edit_alpha"].iloc[2])
    assert meta["edit_layer"].tolist() == ["midblock", "midblock", "encoder_bottleneck"]
    assert meta["edit_steps"].tolist() == ["1,2", "1,2", "0"]
    assert meta["edit_from_set"].iloc[0] == ",".join(set_a) and meta["edit_set"].iloc[0] == ",".join(set_b)
    assert meta["edit_set"].iloc[2] == ",".join(set_b) and meta["edit_from_set"].isna().iloc[2]
    assert set(meta["edit_parents"]) == {parent} and meta["edit_key"].nunique() == 3
    assert set(meta["run_id"]) == {f"edit-{RUN}"} and set(meta["class_id"]) == {5}
    manifest = Store(store_root).manifest(f"edit-{RUN}")
    assert manifest["settings"]["kind"] == "edit" and manifest["settings"]["parent_run"] == RUN
    assert list(manifest["layers"]) == LAYERS
    # DuckDB users can query it: the edits of a parent
    found = Store(store_root).cursor().execute(
        "SELECT count(*) FROM samples WHERE edit_parents = ?", [parent]).fetchone()[0]
    assert found == 3


def test_the_same_edit_twice_adds_nothing(store_root, editor):
    from pipeline.edit import Editor
    from store import Store

    parent = sid(4 * PER_CLASS + 3)
    first = editor.steer(parent, "encoder_bottleneck", of_class(4, 3), of_class(9, 3), [0, 1, 2])
    before = len(Store(store_root).samples(run_ids=[f"edit-{RUN}"]))
    messages = []
    again = Editor(store_root, device="cpu", progress=messages.append).steer(
        parent, "encoder_bottleneck", of_class(4, 3), of_class(9, 3), [2, 0, 1])
    assert again == [first[2], first[0], first[1]]
    assert len(Store(store_root).samples(run_ids=[f"edit-{RUN}"])) == before
    assert not any("generating" in m or "recomputing" in m for m in messages)  # nothing computed either
    # a new alpha next to known ones computes only the new one
    more = editor.steer(parent, "encoder_bottleneck", of_class(4, 3), of_class(9, 3), [1, 3])
    assert more[0] == first[1] and more[1] not in first
    assert len(Store(store_root).samples(run_ids=[f"edit-{RUN}"])) == before + 1


def test_an_edit_result_is_no_parent_but_a_regenerated_sample_is(store_root, editor):
    from pipeline.edit import EditError

    (steered,) = editor.steer(sid(8), "midblock", [sid(9)], [sid(190)], [1.5])
    with pytest.raises(EditError, match=f"sample {steered} is the result of an edit \\(steer\\)"):
        editor.regenerate(steered, label=1)
    with pytest.raises(EditError, match="is the result of an edit"):
        editor.patch(sid(8), "midblock", [sid(9), steered])
    (again,) = editor.regenerate(sid(8))
    (twice,) = editor.regenerate(again)  # a regenerated sample is its seed and label: it regenerates exactly
    assert np.array_equal(image(store_root, twice), image(store_root, sid(8)))
    # and a set member: from the edit run, so recomputed before the edit rather than in its batch
    messages: list[str] = []
    editor.progress = messages.append
    try:
        (patched,) = editor.patch(sid(8), "midblock", [again], steps=[1, 2])
    finally:
        editor.progress = lambda _m: None
    assert any("recomputing the full activations of 1 sample at midblock" in m and "batch" not in m
               for m in messages), messages
    assert np.array_equal(image(store_root, patched), image(store_root, sid(8)))


def test_an_edit_killed_before_its_commit_leaves_nothing_and_reruns(store_root, editor, monkeypatch):
    from store import Store, writer
    from store.verify import verify

    real = writer.atomic_write_parquet

    def killed(path, *args, **kwargs):
        if "samples" in path.parts:  # the commit record: the process dies just before it
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    before = len(Store(store_root).samples(run_ids=[f"edit-{RUN}"]))
    monkeypatch.setattr(writer, "atomic_write_parquet", killed)
    with pytest.raises(KeyboardInterrupt):
        editor.interpolate(sid(20), sid(40), 6)
    monkeypatch.undo()
    assert len(Store(store_root).samples(run_ids=[f"edit-{RUN}"])) == before
    assert Store(store_root).manifest(f"edit-{RUN}")["status"] == "interrupted"
    frames = editor.interpolate(sid(20), sid(40), 6)
    assert len(Store(store_root).samples(run_ids=[f"edit-{RUN}"])) == before + 6
    report = verify(store_root)
    assert report.ok and not report.orphans, report.lines()
    assert np.array_equal(image(store_root, frames[0]), image(store_root, sid(20)))


def test_a_patch_says_it_recomputes_the_set(store_root):
    from pipeline.edit import Editor

    messages = []
    Editor(store_root, device="cpu", progress=messages.append).patch(sid(7), "midblock", of_class(0, 3))
    assert any("recomputing the full activations of 3 samples at midblock" in m for m in messages)


def test_sets_taken_in_the_edits_batch_equal_sets_recomputed_before(store_root):
    from pipeline.edit import Editor

    messages: list[str] = []
    fused = Editor(store_root, device="cpu", progress=messages.append)
    set_a, set_b = of_class(1, 4), of_class(7, 3)
    fused.steer(sid(2 * PER_CLASS + 9), "midblock", set_a, set_b, [1.5, 0])
    assert [m for m in messages if "recomputing" in m] == [
        "from-set: recomputing the full activations of 4 samples at midblock (the store keeps full, float16), "
        "in the edit's batch",
        "to-set: recomputing the full activations of 3 samples at midblock (the store keeps full, float16), "
        "in the edit's batch"]
    before = Editor(store_root, device="cpu")
    means = before.sets_activations([(before.parents(set_a), "a"), (before.parents(set_b), "b")], "midblock",
                                    [0, 1, 2, 3])
    kept = [fused.set_activations(fused.parents(ids), "midblock", [0, 1, 2, 3]) for ids in (set_a, set_b)]
    for got, want in zip(kept, means, strict=True):
        assert sorted(got) == [0, 1, 2, 3]
        for step in range(4):
            torch.testing.assert_close(got[step], want[step], rtol=1e-5, atol=1e-5)
    messages.clear()
    fused.patch(sid(2 * PER_CLASS + 9), "midblock", set_a)  # the means are kept: nothing recomputed
    assert not [m for m in messages if "recomputing" in m]


# -- meaning ------------------------------------------------------------------------------------------------

def test_steering_from_3_towards_8_raises_the_probability_of_8(store_root, editor):
    alphas = [0, 0.5, 1, 2]
    threes, eights = of_class(3), of_class(8)
    probs = np.zeros((len(threes), len(alphas)))
    for i, parent in enumerate(threes):  # 20 seeds: the 20 threes of the run
        ids = editor.steer(parent, "encoder_bottleneck", threes, eights, alphas)
        images = np.stack([image(store_root, x) for x in ids])
        probs[i] = digit_probabilities(images)[:, 8]
    mean = probs.mean(axis=0)
    print("\nsteering 3 -> 8 at encoder_bottleneck, mean P(8) over 20 seeds by alpha "
          + ", ".join(f"{a}: {p:.2e}" for a, p in zip(alphas, mean, strict=True)))
    assert np.all(np.diff(mean) > 0), mean


def test_steering_after_the_skips_turns_a_3_into_an_8(store_root, editor):
    """At the bottleneck the effect is tiny on this model (the label enters every decoder block and the encoder's
    skips bypass it); after the 4x4 decoder has taken its skip, the same mean difference turns a 3 into an 8."""
    threes, eights = of_class(3), of_class(8)
    probs = np.zeros((10, 2, 10))
    for i, parent in enumerate(threes[:10]):
        ids = editor.steer(parent, "dec.4x4_block1", threes, eights, [0, 1])
        probs[i] = digit_probabilities(np.stack([image(store_root, x) for x in ids]))
    mean = probs.mean(axis=0)
    print(f"\nsteering 3 -> 8 at dec.4x4_block1, 10 seeds: P(8) {mean[0, 8]:.3f} -> {mean[1, 8]:.3f}, "
          f"P(3) {mean[0, 3]:.3f} -> {mean[1, 3]:.3f} (alpha 0 -> 1)")
    assert mean[1, 8] > 0.5 > mean[1, 3] and mean[0, 3] > 0.5


def test_generating_from_a_class_k_neighbour_set_draws_k(store_root, editor):
    from store import Store

    acts = Store(store_root).activations("demo", "encoder_bottleneck", step=3, run_ids=[RUN])
    labels = rows(store_root, list(acts.sample_ids))["class_id"].to_numpy()
    hits, total = 0, 0
    for k in range(10):
        for j in (0, 1):  # two samples of each digit
            target = k * PER_CLASS + j
            at = list(acts.sample_ids).index(sid(target))
            dist = np.linalg.norm(acts.matrix - acts.matrix[at], axis=1)
            near = [i for i in np.argsort(dist)[:11] if i != at]
            members = [acts.sample_ids[i] for i in near if labels[i] == k]
            (out,) = editor.patch(sid(target), "encoder_bottleneck", members)
            hits += int(digit_predictions(image(store_root, out)[None])[0] == k)
            total += 1
    print(f"\ngenerated from class-k neighbour sets at encoder_bottleneck: {hits}/{total} recognised as k")
    assert hits / total >= 0.8


# -- command line -------------------------------------------------------------------------------------------

def test_the_command_prints_result_ids_in_the_order_asked(store_root, editor, capsys):
    from pipeline.__main__ import main

    a, b = sid(10), sid(90)
    assert main(["edit", "--store", str(store_root), "--quiet", "interpolate", "--from", a, "--to", b,
                 "--frames", "3"]) == 0
    frames = capsys.readouterr().out.split()
    assert frames == editor.interpolate(a, b, 3)
    assert main(["edit", "--store", str(store_root), "steer", "--sample", a, "--layer", "midblock",
                 "--from-set", f"{sid(11)},{sid(12)}", "--to-set", sid(91), "--alpha", "1,0,0.5", "--quiet"]) == 0
    steered = capsys.readouterr().out.split()
    assert rows(store_root, steered)["edit_alpha"].tolist() == [1.0, 0.0, 0.5]
    assert main(["edit", "--store", str(store_root), "--device", "cpu", "patch", "--sample", a, "--layer",
                 "midblock", "--set", f"{sid(11)},{sid(12)}", "--steps", "2,3"]) == 0
    out = capsys.readouterr()
    assert len(out.out.split()) == 1 and "recomputing" in out.err
    assert main(["edit", "--store", str(store_root), "regenerate", "--sample", a, "--label", "4", "--quiet"]) == 0
    assert rows(store_root, capsys.readouterr().out.split())["class_id"].tolist() == [4]


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory):
    """A store with a demo run, a run of another class model, and a text-to-image sample."""
    from pipeline.adapters.edm import load_demo
    from pipeline.generate import generate
    from store import RunWriter
    from tests.edm_fixtures import tiny_edm_adapter

    root = tmp_path_factory.mktemp("edit-mixed")
    generate(load_demo(torch.device("cpu"), samples_per_class=1), root, 10, ["midblock"], run_id="d",
             progress=False)
    generate(tiny_edm_adapter(samples_per_class=1), root, 10, ["encoder_bottleneck"], run_id="t",
             progress=False)
    with RunWriter(root, {"run_id": "p", "model": "sd15", "layers": [], "seed": 0}) as w:
        w.write_batch([0], [{"seed": 1, "prompt": "a red car", "label": "a red car"}], None, {})
    with RunWriter(root, {"run_id": "r", "model": "demo", "layers": [], "seed": 0, "settings": {"kind": "real"}}) as w:
        w.write_batch([0], [{"seed": 1, "class_id": 3, "label": "3"}], None, {})
    with RunWriter(root, {"run_id": "e", "model": "demo", "layers": [], "seed": 0,
                          "settings": {"kind": "encoded"}}) as w:
        w.write_batch([0], [{"seed": 1, "class_id": 3, "label": "3"}], None, {})
    return root


@pytest.mark.parametrize("argv, message", [
    (["patch", "--sample", "d-00000009", "--layer", "midblock", "--set", "d-00000001,nope-00000001"],
     "unknown sample nope-00000001: not in the store"),
    (["regenerate", "--sample", "d-00000042"], "unknown sample d-00000042"),
    (["patch", "--sample", "d-00000001", "--layer", "no_such_layer", "--set", "d-00000002"],
     "unknown layer(s) no_such_layer for model 'demo'; valid layers:"),
    (["patch", "--sample", "d-00000001", "--layer", "midblock", "--set", "d-00000002", "--steps", "1,9"],
     "step 9 not in run d: model demo samples it in 4 steps (0..3)"),
    (["steer", "--sample", "d-00000001", "--layer", "midblock", "--from-set", "d-00000002,t-00000003",
      "--to-set", "d-00000004"], "the from-set mixes models: demo (1 sample), tiny (1 sample)"),
    (["interpolate", "--from", "d-00000001", "--to", "t-00000002"], "interpolate needs two samples of one run"),
    (["regenerate", "--sample", "p-00000000", "--label", "3"],
     "model sd15 is conditioned on a prompt, not a class label: use --prompt"),
    (["regenerate", "--sample", "d-00000001", "--prompt", "a blue car"],
     "model demo is conditioned on a class label, not a prompt: use --label"),
    (["regenerate", "--sample", "d-00000001", "--label", "12"], "label 12 is out of range for model 'demo'"),
    (["--device", "nope", "regenerate", "--sample", "d-00000001"], "on device nope:"),
    (["regenerate", "--sample", "r-00000000", "--label", "3"], "sample r-00000000 is an image run through the network (run r, kind real)"),
    (["patch", "--sample", "d-00000001", "--layer", "midblock", "--set", "d-00000002,r-00000000"],
     "sample r-00000000 is an image run through the network (run r, kind real)"),
    (["regenerate", "--sample", "e-00000000"], "sample e-00000000 is an image run through the network (run e, kind encoded)"),
])
def test_the_command_refuses_with_one_line_and_exit_2(mixed_root, capsys, argv, message):
    from pipeline.__main__ import main

    assert main(["edit", "--store", str(mixed_root), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and err.count("error:") == 1


def test_verify_checks_the_provenance(store_root, editor, tmp_path):
    from store import RunWriter
    from store.verify import verify

    editor.patch(sid(1), "midblock", [sid(2), sid(3)])
    report = verify(store_root)
    assert report.ok and not report.missing_refs, report.lines()

    with RunWriter(tmp_path, {"run_id": "e", "model": "demo", "layers": [], "seed": 0}) as w:
        w.write_batch([0, 1], [{"seed": 1, "edit_op": "patch", "edit_parents": "e-00000001",
                                "edit_set": "e-00000001,gone-00000007"},
                               {"seed": 2, "edit_op": "regenerate", "edit_parents": "gone-00000003"}], None, {})
    report = verify(tmp_path)
    assert not report.ok
    assert sorted(ref for _p, _s, ref in report.missing_refs) == ["gone-00000003", "gone-00000007"]
    assert any("MISSING  gone-00000007 (named by the edit provenance of e-00000000" in line
               for line in report.lines())


# -- the generator cache the app shares between sessions ---------------------------------------------------

def test_two_threads_editing_through_one_cache_load_once_and_make_the_same_images(tmp_path, monkeypatch):
    import threading
    import time

    import pipeline.adapters as adapters
    from pipeline.adapters.edm import load_demo
    from pipeline.edit import Editor, GeneratorCache
    from pipeline.generate import generate

    roots = [tmp_path / "alone", tmp_path / "together"]
    for root in roots:
        generate(load_demo(torch.device("cpu"), samples_per_class=2), root, 20, ["midblock"], run_id="r",
                 progress=False)
    loads, inside, most = [], [0], [0]
    real = adapters.build_adapter

    def slow_counted_load(*args, **kwargs):
        loads.append(args[0])
        time.sleep(0.3)  # both threads ask while it loads
        adapter = real(*args, **kwargs)

        def enter(_m, _i):
            inside[0] += 1
            most[0] = max(most[0], inside[0])

        def leave(_m, _i, _o):
            inside[0] -= 1

        adapter.root.register_forward_pre_hook(enter)
        adapter.root.register_forward_hook(leave)
        return adapter

    monkeypatch.setattr(adapters, "build_adapter", slow_counted_load)

    def work(editor, k):
        if k == 0:
            return editor.steer("r-00000006", "midblock", ["r-00000007", "r-00000012"], ["r-00000016"], [0.5, 1, 2])
        return editor.patch_many(["r-00000001", "r-00000003"], "midblock", ["r-00000010", "r-00000011"])

    alone = Editor(roots[0], device="cpu")
    expected = [[image(roots[0], x) for x in work(alone, k)] for k in (0, 1)]
    assert len(loads) == 1

    cache = GeneratorCache()
    results: list = [None, None]
    errors: list = []
    start = threading.Barrier(2)

    def thread(k):
        try:
            start.wait()
            results[k] = work(Editor(roots[1], device="cpu", generators=cache), k)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=thread, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(loads) == 2 and len(cache) == 1  # one load for this cache, shared by both threads
    assert most[0] == 1  # never two samplings through the shared module at once
    for k in (0, 1):
        got = [image(roots[1], x) for x in results[k]]
        assert len(got) == len(expected[k])
        assert all(np.array_equal(a, b) for a, b in zip(got, expected[k], strict=True))


def test_the_cache_loads_each_key_once_and_retries_a_failed_load():
    import threading

    from pipeline.edit import GeneratorCache

    cache, calls = GeneratorCache(), []

    def load():
        calls.append(1)
        if len(calls) == 1:
            raise OSError("disk hiccup")
        return object()

    with pytest.raises(OSError):
        cache.get_or_load(("m",), load)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get_or_load(("m",), load))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 2 and len({id(g) for g in got}) == 1 and ("m",) in cache
    assert cache.lock(("m",)) is cache.lock(("m",)) and cache.lock(("m",)) is not cache.lock(("n",))
    with cache.lock(("m",)), cache.lock(("m",)):  # re-entrant: an edit's set recompute inside the edit
        pass


def test_a_teacher_run_is_edited_with_its_own_sampler(tmp_path):
    """A teacher's run is stored under its student's key (demo) and names its family (demo-teacher) in its
    settings: edits rebuild that family, EDM's Heun sampler with the run's churn, and reproduce its samples."""
    from pipeline.adapters.edm import demo_teacher_loader, load_demo
    from pipeline.edit import Editor
    from pipeline.generate import generate
    from pipeline.hooks import tag
    from pipeline.sampling import Churn

    teacher = demo_teacher_loader(samples_per_class=1, steps=6, x0_previews=True,
                                  churn=Churn(s_churn=20.0, s_min=0.05, s_max=50.0))
    generate(teacher, tmp_path, 10, ["midblock"], run_id="teach", progress=False)
    editor = Editor(tmp_path, device="cpu")
    (parent,) = editor.parents(["teach-00000003"])
    assert parent.model == "demo"
    source = editor.generator_source(parent)
    assert source.model == "demo-teacher" and source.steps == 6 and dict(source.options)["churn"]
    (same,) = editor.regenerate("teach-00000003")
    steered = editor.steer("teach-00000003", "midblock", ["teach-00000001"], ["teach-00000008"], [0, 2])
    frames = editor.interpolate("teach-00000003", "teach-00000005", 3)
    ref = image(tmp_path, "teach-00000003")
    for sid_ in (same, steered[0], frames[0]):
        assert np.array_equal(image(tmp_path, sid_), ref)
    assert np.array_equal(image(tmp_path, frames[-1]), image(tmp_path, "teach-00000005"))
    assert not np.array_equal(image(tmp_path, steered[1]), ref)
    # the student's sampler on the same seed and label makes another image: the teacher's was used
    demo = load_demo(torch.device("cpu"), steps=6)
    assert not np.array_equal(demo.sample([parent.seed], [demo.condition(class_id=parent.class_id)], tag())[0], ref)


@pytest.mark.parametrize("model, extra", [("demo-teacher", ["--steps", "4"]), ("demo-student", [])])
def test_regenerating_a_teacher_or_student_sample_reproduces_it(tmp_path, model, extra):
    """Teachers and students are stored under `demo`: the Editor rebuilds the run's own family (its sampler,
    its weights) from `settings.model_family`, so the same seed and label give the same image bit for bit."""
    from pipeline.__main__ import main
    from pipeline.edit import Editor
    from store import Store

    store = tmp_path / "s"
    assert main(["generate", "--model", model, "--store", str(store), "--num-samples", "1", *extra, "--quiet"]) == 0
    sample = Store(store).samples("demo").iloc[0]
    ids = Editor(store, device="cpu").regenerate(sample.sample_id, label=int(sample["class_id"]),
                                                 seed=int(sample["seed"]))
    st = Store(store)
    assert st.images([sample.sample_id]) == st.images(ids)
