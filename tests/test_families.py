"""The model-family registry (pipeline/families.py): a family registered here, and nowhere else, is listed,
built, generated and shown; and every shipped entry agrees with what its adapter really exposes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import families
from pipeline.__main__ import main
from pipeline.adapters import build_adapter
from pipeline.commands.layers import layer_table
from pipeline.families import Family, Recipe
from store import Store
from tests.edm_fixtures import TINY_EDM

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = tuple(families.MODELS)  # as imported, before any test registers a family
EDM = ("demo", "imagenet", "demo-teacher", "imagenet-teacher")
T2I = ("sd15", "sdxl", "sdxl-4step", "sdxl-4step-lora")


# ------------------------------------------------------------------ a tiny family, from the EDM pieces
def _tiny_adapter(name: str, device, sigmas, **kwargs):
    from pipeline.adapters.edm import DIGIT_NAMES, EDMAdapter
    from pipeline.models.edm import EDMPrecond

    if torch.device(device).type == "meta":
        with torch.device("meta"):
            net = EDMPrecond(**TINY_EDM)
    else:
        torch.manual_seed(0)
        net = EDMPrecond(**TINY_EDM)
    return EDMAdapter(net, TINY_EDM, name=name, class_names=list(DIGIT_NAMES), sigmas=sigmas, device=device,
                      checkpoint="random init", checkpoint_sha256="tiny", **kwargs)


CALLS: list[dict] = []


def tiny_loader(name, *, checkpoint=None, device=None, steps=None, dtype=None, class_ids=None,
                samples_per_class=None, x0_previews=False, **other):
    """A loader as an adapter file would write it: the EDM adapter on the 8-px test network."""
    from pipeline.sampling import karras_sigmas

    CALLS.append({"name": name, "steps": steps, "dtype": dtype, **other})
    return _tiny_adapter(name, device, karras_sigmas(steps), class_ids=class_ids,
                         samples_per_class=samples_per_class, dtype=dtype, x0_previews=x0_previews)


def tiny_layers(name, resolution=None):
    adapter = _tiny_adapter(name, torch.device("meta"), [80.0])
    return adapter.layers(), adapter.layer_shapes()


TINY = Family("tiny-fam", loader=tiny_loader, layer_registry=tiny_layers, conditioning="class",
              default_layers=("encoder_bottleneck",),
              recipe=Recipe(steps=2, fixed_steps=False, dtype="float32", description="an 8-px test network"))


@pytest.fixture
def tiny_family():
    CALLS.clear()
    families.register(TINY)
    try:
        yield TINY
    finally:
        families.unregister(TINY.name)


def test_a_registered_family_is_listed_built_generated_and_shown(tiny_family, tmp_path, capsys):
    import pipeline.adapters

    assert "tiny-fam" in pipeline.adapters.MODELS and pipeline.adapters.MODELS[-1] == "tiny-fam"

    # `python -m pipeline layers`: rows from the family's layer registry, shapes those of the real network
    rows = {r["name"]: r for r in layer_table("tiny-fam")}
    real = _tiny_adapter("x", torch.device("cpu"), [80.0])
    bottleneck = real.layers()["encoder_bottleneck"]
    row = next(r for r in rows.values() if r["path"] == bottleneck)
    assert "encoder_bottleneck" in [row["name"], *row["aliases"]]
    assert row["shape"] == real.layer_shapes()["encoder_bottleneck"] == (32, 4, 4)
    assert {r["path"] for r in rows.values()} == set(real.layers().values())
    assert main(["layers", "--model", "tiny-fam"]) == 0
    assert "(encoder_bottleneck)" in capsys.readouterr().out

    # build_adapter: the family's loader, with the recipe's steps and dtype filled in
    adapter = build_adapter("tiny-fam")
    assert adapter.name == "tiny-fam" and adapter.num_steps == 2 and adapter.dtype == torch.float32
    assert CALLS[-1]["steps"] == 2 and CALLS[-1]["dtype"] == torch.float32

    # generate: a --model choice; without --layers it records the family's default layers
    store = tmp_path / "store"
    code = main(["generate", "--model", "tiny-fam", "--num-samples", "4", "--batch-size", "2",
                 "--store", str(store), "--quiet"])
    assert code == 0, capsys.readouterr().err
    st = Store(store)
    assert st.models() == ["tiny-fam"] and st.layers("tiny-fam") == ["encoder_bottleneck"]
    samples = st.samples(model="tiny-fam")
    assert len(samples) == 4 and set(samples["num_steps"]) == {2}
    assert samples["class_id"].notna().all() and samples["prompt"].isna().all()  # a class family
    assert "prompts" not in CALLS[-1]  # no prompt set for a class family
    assert main(["generate", "--model", "tiny-fam", "--num-samples", "2", "--steps", "3", "--layers", "midblock",
                 "--store", str(store), "--quiet"]) == 0
    assert set(Store(store).samples(model="tiny-fam")["num_steps"]) == {2, 3}

    # the app opens the model on its default layer, not on the shipped families' midblock
    from app.explore import default_layer

    stored = ["enc.8x8_conv", "encoder_bottleneck", "midblock"]
    assert default_layer(stored, "tiny-fam") == "encoder_bottleneck"
    assert default_layer(stored, "demo") == "midblock"


def test_a_registered_prompt_family_gets_the_prompt_set_and_fixed_steps(tmp_path, capsys):
    seen = []

    def loader(name, **options):
        seen.append(options)
        raise ValueError("stopped in the loader")

    fam = families.register(Family(
        "tiny-prompt", loader=loader, layer_registry=tiny_layers, conditioning="prompt",
        default_layers=("midblock",), recipe=Recipe(steps=3, fixed_steps=True, dtype=None, description="t")))
    try:
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("a red fox\na blue kettle\n")
        args = ["generate", "--model", "tiny-prompt", "--num-samples", "2", "--store", str(tmp_path / "s"),
                "--prompt-file", str(prompts), "--seeds-per-prompt", "3", "--quiet"]
        assert main(args) == 2
        assert "stopped in the loader" in capsys.readouterr().err
        options = seen[-1]
        assert list(options["prompts"].prompts) == ["a red fox", "a blue kettle"]
        assert options["seeds_per_prompt"] == 3 and options["steps"] is None  # fixed: no recipe steps forced
        assert options["dtype"] is None  # the adapter picks by device

        seen.clear()
        assert main([*args, "--steps", "2"]) == 2
        err = capsys.readouterr().err
        assert "--steps does not apply to tiny-prompt: its timesteps are fixed (" in err
        assert "tiny-prompt runs 3" in err and "sdxl-4step and sdxl-4step-lora run 4" in err
        assert seen == []  # refused before anything was built
    finally:
        families.unregister(fam.name)


def test_shipped_fixed_steps_message_and_unknown_models(tmp_path, capsys):
    code = main(["generate", "--model", "sdxl", "--steps", "2", "--num-samples", "1", "--store", str(tmp_path)])
    assert code == 2
    assert ("--steps does not apply to sdxl: its timesteps are fixed (sd15 and sdxl run 1, sdxl-4step and "
            "sdxl-4step-lora run 4)") in capsys.readouterr().err
    valid = "choose one of " + ", ".join(BUILTIN)
    with pytest.raises(ValueError, match=f"unknown model 'pixart'; {valid}$"):
        families.get_family("pixart")
    with pytest.raises(ValueError, match=f"unknown model 'pixart'; {valid}$"):
        build_adapter("pixart")
    with pytest.raises(SystemExit):
        main(["layers", "--model", "pixart"])
    assert "invalid choice: 'pixart'" in capsys.readouterr().err


def test_register_checks_entries():
    recipe = Recipe(steps=1, fixed_steps=False, dtype=None, description="d")
    with pytest.raises(ValueError, match="already registered"):
        families.register(Family("demo", loader=tiny_loader, layer_registry=tiny_layers, conditioning="class",
                                 recipe=recipe))
    with pytest.raises(ValueError, match="conditioning 'text' must be one of class, prompt"):
        Family("x", loader=tiny_loader, layer_registry=tiny_layers, conditioning="text", recipe=recipe)
    with pytest.raises(ValueError, match="'pipeline.adapters.edm' must be a callable or 'module:function'"):
        Family("x", loader="pipeline.adapters.edm", layer_registry=tiny_layers, conditioning="class",
               recipe=recipe)
    with pytest.raises(ValueError, match="dtype 'fp8'"):
        Family("x", loader=tiny_loader, layer_registry=tiny_layers, conditioning="class",
               recipe=Recipe(steps=1, fixed_steps=False, dtype="fp8", description="d"))
    assert tuple(families.MODELS) == BUILTIN  # nothing left behind by the tests above


def test_importing_the_registry_costs_no_torch():
    code = (f"import sys, pipeline.families as f; assert len(f.MODELS) == {len(BUILTIN)}; "
            "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
            "assert not heavy, heavy")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


# ------------------------------------------------------------------ the shipped entries agree with the adapters
@pytest.mark.parametrize("model", BUILTIN)
def test_default_and_view_layers_exist_in_the_layer_registry(model):
    fam = families.get_family(model)
    layers, shapes = fam.layers(512 if model in T2I else None)
    assert fam.default_layers and set(fam.default_layers) <= set(layers)
    assert set(fam.view_layers) <= set(layers)
    assert all(len(shapes[name]) == 3 for name in fam.default_layers)
    # the view layers name the default layers' modules (aliases), so the app opens on one of them
    assert {layers[n] for n in fam.view_layers} == {layers[n] for n in fam.default_layers}


def test_demo_entry_agrees_with_its_adapter():
    from pipeline.demo_model import DEMO_SIGMAS

    fam = families.get_family("demo")
    adapter = build_adapter("demo")
    assert adapter.name == "demo" and adapter.num_steps == fam.recipe.steps
    assert adapter.sigmas == list(DEMO_SIGMAS)  # the recipe's 4 steps are the shipped schedule
    assert adapter.dtype == getattr(torch, fam.recipe.dtype)
    conditions = adapter.conditions(np.arange(4), seed=0)
    assert fam.conditioning == "class"
    assert all(c.class_id is not None and c.prompt is None for c in conditions)
    layers, shapes = fam.layers()
    assert layers == adapter.layers() and shapes == adapter.layer_shapes()


def test_the_shipped_families_are_registered():
    assert set(EDM) | set(T2I) <= set(BUILTIN)
    assert BUILTIN[:2] == ("demo", "imagenet")


def test_edm_teacher_entries_agree_with_their_adapter(monkeypatch):
    from pipeline.adapters import edm

    fam = families.get_family("demo-teacher")
    adapter = build_adapter("demo-teacher")
    assert fam.recipe.heun and not families.get_family("demo").recipe.heun
    assert adapter.name == "demo" and adapter.sampler == "heun" and adapter.num_steps == fam.recipe.steps == 18
    assert fam.layers() == families.get_family("demo").layers()  # the student's layers: one map holds both
    fam = families.get_family("imagenet-teacher")
    with pytest.raises(ValueError, match="--model imagenet-teacher needs --checkpoint"):
        build_adapter("imagenet-teacher")
    seen = {}
    monkeypatch.setattr(edm, "load_imagenet_teacher", lambda checkpoint, device, **kw: seen.update(kw) or "built")
    assert build_adapter("imagenet-teacher", checkpoint="edm.pkl") == "built"
    assert seen["steps"] == fam.recipe.steps == 18 and seen["dtype"] == torch.float32
    assert fam.layers() == families.get_family("imagenet").layers()


def test_imagenet_entry_agrees_with_its_adapter(monkeypatch):
    from pipeline.adapters import edm

    fam = families.get_family("imagenet")
    with pytest.raises(ValueError, match="--model imagenet needs --checkpoint"):
        build_adapter("imagenet")
    seen = {}
    monkeypatch.setattr(edm, "load_imagenet", lambda checkpoint, device, **kw: seen.update(kw) or "built")
    assert build_adapter("imagenet", checkpoint="some/run") == "built"
    assert seen["steps"] == fam.recipe.steps == 1 and seen["dtype"] == torch.float32
    meta = edm.skeleton("imagenet")  # the network the layer registry lists, conditioned on classes
    assert fam.conditioning == "class"
    assert all(c.class_id is not None and c.prompt is None for c in meta.conditions(np.arange(3), seed=1))


@pytest.fixture(scope="module")
def t2i_files(tmp_path_factory):
    from tests.t2i_fixtures import tiny_files

    return tiny_files(tmp_path_factory)


@pytest.mark.parametrize("model", T2I)
def test_text_to_image_entries_agree_with_their_adapter(model, t2i_files):
    from pipeline.adapters.t2i import model_specs
    from pipeline.prompts import PromptSet
    from tests.t2i_fixtures import CATEGORIES, PROMPTS

    fam = families.get_family(model)
    spec = model_specs()[model]
    assert fam.recipe.fixed_steps and fam.recipe.steps == len(spec["timesteps"])
    adapter = build_adapter(model, checkpoint=str(t2i_files.checkpoint(model)),
                            base_model=str(t2i_files.base(model)), prompts=PromptSet.from_lists(PROMPTS, CATEGORIES),
                            steps=None, class_ids=[1], samples_per_class=2)  # class options do not apply
    assert adapter.name == model and adapter.num_steps == fam.recipe.steps
    assert adapter.timesteps == spec["timesteps"]
    assert adapter.dtype == torch.float32  # recipe dtype None: the adapter's per-device choice, CPU here
    assert fam.conditioning == "prompt"
    assert [c.prompt for c in adapter.conditions(np.arange(2), seed=0)] == PROMPTS[:2]
    assert set(fam.default_layers) <= set(adapter.layers())


def test_every_shipped_text_to_image_spec_is_a_registered_family():
    from pipeline.adapters.t2i import model_specs

    served = [f.name for f in families.FAMILIES.values() if f.loader == "pipeline.adapters.t2i:loader"]
    assert served == list(model_specs()) == list(T2I)


def test_app_default_layer_keeps_each_familys_choice():
    from app.explore import default_layer

    assert default_layer(["down0", "mid_block", "encoder_bottleneck", "up0"], "sdxl") == "mid_block"
    assert default_layer(["enc.8x8_conv", "encoder_bottleneck", "midblock"], "imagenet") == "midblock"
    assert default_layer(["enc.8x8_conv", "encoder_bottleneck", "dec.8x8_up"], "demo") == "encoder_bottleneck"
    assert default_layer(["a", "b", "c"], "demo") == "b"  # nothing preferred: the middle
    # a model the registry does not know: every family's preference, each family's order kept
    assert families.view_layers("custom") == ("midblock", "mid_block", "encoder_bottleneck")
    assert default_layer(["encoder_bottleneck", "mid_block"], "custom") == "mid_block"
