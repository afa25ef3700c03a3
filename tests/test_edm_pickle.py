"""The EDM network pickle reader (pipeline/edm_pickle.py): loads the weights, runs nothing in the file.

The test writes pickles in the structure of EDM's ``edm-*.pkl`` files: a dict whose ``ema`` is the network, each
network class reduced to ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` (meta: type, version,
module_src, class_name, state = the module's ``__dict__`` with ``_init_args``/``_init_kwargs`` in a
``dnnlib.util.EasyDict``), ``torch.nn.ModuleDict`` and tensors pickled the ordinary way. Stand-in modules under
those names exist only while writing, and are removed from ``sys.modules`` before loading.
"""

from __future__ import annotations

import os
import pickle
import sys
import types
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from pipeline.checkpoints import CheckpointMismatch
from pipeline.edm_pickle import PickleRefused, load_edm_network, read_edm_pickle
from pipeline.models.edm import EDMPrecond

TINY = dict(img_resolution=8, img_channels=3, label_dim=4, model_channels=8, channel_mult=(1, 2),
            channel_mult_emb=2, num_blocks=1, attn_resolutions=(4,), channels_per_head=8, sigma_data=0.5,
            dropout=0.0)
STAND_INS = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")


@contextmanager
def edm_modules():
    """Fake ``torch_utils.persistence`` and ``dnnlib.util`` modules, only while a pickle is written."""
    persistence = types.ModuleType("torch_utils.persistence")
    util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # pragma: no cover - pickle only looks it up by name
        raise AssertionError("never called while writing")

    _reconstruct_persistent_obj.__module__ = persistence.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = util.__name__, "EasyDict"
    util.EasyDict = EasyDict
    mods = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
            "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}
    sys.modules.update(mods)
    try:
        yield persistence, util
    finally:
        for name in STAND_INS:
            sys.modules.pop(name, None)


class _Persistent:
    """Pickles as EDM's persistence does: a call of _reconstruct_persistent_obj(meta)."""

    def __init__(self, reconstruct, meta):
        self.reconstruct, self.meta = reconstruct, meta

    def __reduce__(self):
        return self.reconstruct, (self.meta,)


def _as_edm(module: torch.nn.Module, persistence, util, module_src: str, init_kwargs=None):
    """`module` in EDM's pickled form: persistent objects for network classes, ModuleDicts as they are."""
    children = OrderedDict((k, None if v is None else _as_edm(v, persistence, util, module_src))
                           for k, v in module._modules.items())
    if isinstance(module, torch.nn.ModuleDict):
        container = torch.nn.ModuleDict()
        container.__dict__["_modules"] = children
        return container
    state = {k: v for k, v in module.__dict__.items() if k != "_modules"}
    state["_modules"] = children
    state["_init_args"] = ()
    state["_init_kwargs"] = util.EasyDict(init_kwargs or {"init_weight": np.float64(np.sqrt(0.2))})
    meta = dict(type="class", version=6, module_src=module_src, class_name=type(module).__name__, state=state)
    return _Persistent(persistence._reconstruct_persistent_obj, meta)


def write_edm_pickle(net: EDMPrecond, path, module_src: str = "import torch\n", extra: dict | None = None):
    config = dict(net.config)
    with edm_modules() as (persistence, util):
        kwargs = util.EasyDict(img_resolution=config["img_resolution"], img_channels=config["img_channels"],
                               label_dim=config["label_dim"], use_fp16=False, sigma_min=0, sigma_max=float("inf"),
                               sigma_data=0.5, model_type="DhariwalUNet", model_channels=config["model_channels"],
                               channel_mult=list(config["channel_mult"]), channel_mult_emb=config["channel_mult_emb"],
                               num_blocks=config["num_blocks"], attn_resolutions=list(config["attn_resolutions"]),
                               dropout=0.1)
        ema = _as_edm(net, persistence, util, module_src, init_kwargs=kwargs)
        data = {"ema": ema, "loss_fn": None, "augment_pipe": None,
                "dataset_kwargs": util.EasyDict(class_name="training.dataset.ImageFolderDataset"), **(extra or {})}
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=4)
    assert not any(name in sys.modules for name in STAND_INS)


def _tiny_net(seed: int = 0) -> EDMPrecond:
    torch.manual_seed(seed)
    net = EDMPrecond(**TINY).eval()
    with torch.no_grad():  # zero-initialised layers would hide a wrong key: give every value something
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def test_pickle_loads_into_edmprecond_and_computes_the_same(tmp_path):
    net = _tiny_net()
    path = tmp_path / "edm-tiny.pkl"
    write_edm_pickle(net, path)
    assert "torch_utils.persistence" not in sys.modules and "dnnlib.util" not in sys.modules
    loaded, config = load_edm_network(path)
    assert {k: config[k] for k in ("img_resolution", "label_dim", "model_channels", "channel_mult")} == \
        {"img_resolution": 8, "label_dim": 4, "model_channels": 8, "channel_mult": (1, 2)}
    assert set(loaded.state_dict()) == set(net.state_dict())
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(3, 3, 8, 8) * 5
    sigma = torch.tensor([5.0, 0.5, 40.0])
    labels = torch.tensor([0, 3, 1])
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma, labels), net(x, sigma, labels))


def test_module_src_with_a_side_effect_never_runs(tmp_path):
    marker = tmp_path / "ran.txt"
    src = f"open({str(marker)!r}, 'w').write('executed')\nimport os\nos.system('touch {marker}')\n"
    path = tmp_path / "edm-evil-src.pkl"
    write_edm_pickle(_tiny_net(), path, module_src=src)
    loaded, _ = load_edm_network(path)
    assert not marker.exists()
    data = read_edm_pickle(path)
    assert data["ema"].class_name == "EDMPrecond" and data["ema"].source_chars == len(src)
    assert not marker.exists()
    assert isinstance(loaded, EDMPrecond)


class _Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_forbidden_global_is_refused_by_name(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "edm-evil-global.pkl"
    write_edm_pickle(_tiny_net(), path, extra={"payload": _Boom(marker)})
    with pytest.raises(PickleRefused, match=r"(posix|os)\.system.*not allowed"):
        load_edm_network(path)
    assert not marker.exists()


def test_other_code_paths_are_refused(tmp_path):
    # a bare torch.nn.Module (its class is not an allowed global), and a wrong top-level object
    path = tmp_path / "module.pkl"
    with open(path, "wb") as f:
        pickle.dump({"ema": torch.nn.Linear(2, 2)}, f)
    with pytest.raises(PickleRefused, match="torch.nn.modules.linear.Linear"):
        load_edm_network(path)
    path2 = tmp_path / "list.pkl"
    with open(path2, "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(PickleRefused, match="'ema'"):
        load_edm_network(path2)
    path3 = tmp_path / "garbage.pkl"
    path3.write_bytes(b"not a pickle at all")
    with pytest.raises(PickleRefused, match="not a readable EDM network pickle"):
        load_edm_network(path3)


def test_mismatched_weights_fail_the_strict_load(tmp_path):
    net = _tiny_net()
    path = tmp_path / "edm-missing.pkl"
    del net.model.out_conv._parameters["bias"]
    net.model.out_conv.bias = None
    write_edm_pickle(net, path)
    with pytest.raises(CheckpointMismatch, match="model.out_conv.bias"):
        load_edm_network(path)
