"""EDM's network pickles (e.g. NVIDIA's ``edm-imagenet-64x64-cond-adm.pkl``) read without running their code.

Such a file is a pickle of a dict whose ``ema`` entry is the network. EDM pickled every network class through
its persistence mechanism: an object becomes a call of ``torch_utils.persistence._reconstruct_persistent_obj(meta)``
with ``meta = dict(type='class', version=..., module_src=<source text of the class's module>,
class_name=<str>, state=<the object's __dict__>)``; loading it the ordinary way *executes* ``module_src``.
Here a restricted unpickler resolves only the few globals such a file needs, each to something inert:

* tensors: ``torch._utils._rebuild_tensor(_v2)``, ``_rebuild_parameter(_with_state)`` (kept as plain tensors)
  and ``torch.storage._load_from_bytes``, whose bytes are read with ``torch.load(weights_only=True)``;
* ``collections.OrderedDict``, ``builtins.set``/``frozenset``, and numpy's scalar/dtype pair (numeric kinds
  only: EDM's ``_init_kwargs`` hold numbers such as ``np.sqrt(0.2)``);
* ``_reconstruct_persistent_obj`` -> :class:`PersistentObject`, which keeps ``class_name`` and ``state`` and
  never looks at ``module_src`` beyond its length; ``dnnlib.util.EasyDict`` -> :class:`EasyDict`, a plain dict;
  ``torch.nn.ModuleDict``/``ModuleList``/``Sequential`` (pickled the ordinary way) -> :class:`ModuleContainer`.

Any other global is refused with :class:`PickleRefused`, which names it. The tensors are then collected by
module path from the network's ``_parameters``/``_buffers``/``_modules`` and loaded into our own
:class:`~pipeline.models.edm.EDMPrecond` with ``strict=True``.
"""

from __future__ import annotations

import io
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "EasyDict",
    "ModuleContainer",
    "PersistentObject",
    "PickleRefused",
    "collect_tensors",
    "edm_config",
    "load_edm_network",
    "read_edm_pickle",
]


class PickleRefused(ValueError):
    """The pickle needs something this reader does not allow (a global, a structure it cannot use)."""


class PersistentObject:
    """An EDM persistent object, inert: its class name and pickled ``state``; the class source is never run."""

    def __init__(self, meta):
        if not isinstance(meta, dict):
            raise PickleRefused(f"a persistent object's metadata is a {type(meta).__name__}, not a dict")
        if meta.get("type") != "class":
            raise PickleRefused(f"persistent object of type {meta.get('type')!r}: only classes are supported")
        self.class_name = str(meta.get("class_name"))
        self.version = meta.get("version")
        self.source_chars = len(meta.get("module_src") or "")  # kept as a number only: it is never executed
        state = meta.get("state")
        self.state = state if isinstance(state, dict) else {}

    def __setstate__(self, state):  # a BUILD on it: keep the data, run nothing
        self.state = state if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"PersistentObject({self.class_name})"


class ModuleContainer:
    """Stand-in for ``torch.nn.ModuleDict``/``ModuleList``/``Sequential``: holds the pickled ``__dict__``."""

    class_name = "ModuleContainer"

    def __init__(self, *args):
        self.state: dict = {}

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {}


def _container(name: str) -> type:
    return type(name, (ModuleContainer,), {"class_name": name})


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: the same items, as a dict."""

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.update(state)


def _storage_from_bytes(data):
    """``torch.storage._load_from_bytes``, without its unrestricted ``torch.load``."""
    if not isinstance(data, bytes | bytearray):
        raise PickleRefused(f"a tensor storage is a {type(data).__name__}, not bytes")
    return torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    """``torch._utils._rebuild_tensor(_v2)``: requires_grad, backward hooks and metadata are dropped."""
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise PickleRefused(f"a tensor is rebuilt from a {type(storage).__name__}, not a storage")
    return torch._utils._rebuild_tensor(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_ignored):
    if not isinstance(data, torch.Tensor):
        raise PickleRefused(f"a parameter holds a {type(data).__name__}, not a tensor")
    return data


_NUMERIC_KINDS = "biufc"


def _np_dtype(spec, *_flags):
    if not isinstance(spec, str):
        raise PickleRefused(f"a numpy dtype is described by a {type(spec).__name__}, not a string")
    return np.dtype(spec)


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS or not isinstance(data, bytes):
        raise PickleRefused(f"numpy scalar of dtype {dtype!r}: only numbers are read")
    return np.frombuffer(data, dtype=dtype, count=1)[0].item()


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentObject,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("torch.nn.modules.container", "ModuleDict"): _container("ModuleDict"),
    ("torch.nn.modules.container", "ModuleList"): _container("ModuleList"),
    ("torch.nn.modules.container", "Sequential"): _container("Sequential"),
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise PickleRefused(
                f"the pickle needs the global {module}.{name}, which is not allowed: only tensors, ordered dicts "
                "and EDM's persistent network objects are read (nothing in the file is executed)") from None

    def persistent_load(self, pid):
        raise PickleRefused("the pickle uses persistent ids (a torch.save zip file?): give EDM's network "
                            "pickle, or load a state dict as a checkpoint file")


def read_edm_pickle(path: str | os.PathLike):
    """Unpickle ``path`` with the restricted unpickler: dicts, tensors and inert stand-ins only."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head == b"PK\x03\x04" or path.suffix == ".safetensors":
            raise PickleRefused(f"{path} is a {'safetensors' if path.suffix == '.safetensors' else 'torch.save'} "
                                "weights file, not EDM's network pickle: a state dict (e.g. DMD2's "
                                "pytorch_model.bin) loads with --model imagenet")
        try:
            return _Unpickler(f).load()
        except PickleRefused as exc:
            raise PickleRefused(f"{path}: {exc}") from None
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: say so, never a traceback
            raise PickleRefused(f"{path} is not a readable EDM network pickle: {type(exc).__name__}: {exc}") \
                from None


def _network(data, path) -> PersistentObject:
    if isinstance(data, PersistentObject):
        return data
    if not isinstance(data, dict) or "ema" not in data:
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise PickleRefused(f"{path}: expected a dict with the network under 'ema', found {keys}")
    net = data["ema"]
    if not isinstance(net, PersistentObject):
        raise PickleRefused(f"{path}: 'ema' holds a {type(net).__name__}, not an EDM persistent network")
    return net


def collect_tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer of a pickled module tree, by module path (``model.enc.x.weight``)."""
    if not isinstance(obj, PersistentObject | ModuleContainer):
        raise PickleRefused(f"module {prefix.rstrip('.') or '(root)'} is a {type(obj).__name__}, not a module")
    state = obj.state
    skip = state.get("_non_persistent_buffers_set") or set()
    out: dict[str, torch.Tensor] = {}
    for field in ("_parameters", "_buffers"):
        for name, value in (state.get(field) or {}).items():
            if value is None or (field == "_buffers" and name in skip):
                continue
            if not isinstance(value, torch.Tensor):
                raise PickleRefused(f"{prefix}{name} is a {type(value).__name__}, not a tensor")
            out[f"{prefix}{name}"] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(collect_tensors(child, f"{prefix}{name}."))
    return out


_POSITIONAL = ("img_resolution", "img_channels", "label_dim")
_OURS = ("img_resolution", "img_channels", "label_dim", "model_channels", "channel_mult", "channel_mult_emb",
         "num_blocks", "attn_resolutions", "sigma_data")


def edm_config(net: PersistentObject) -> dict:
    """Our ``EDMPrecond`` keywords from the pickled network's constructor arguments (``_init_args`` and
    ``_init_kwargs``); what they omit takes EDM's ADM defaults, which are ours (imagenet_config())."""
    from pipeline.models.edm import imagenet_config

    if net.class_name != "EDMPrecond":
        raise PickleRefused(f"the network is an EDM {net.class_name}, not EDMPrecond")
    args = list(net.state.get("_init_args") or ())
    kwargs = dict(net.state.get("_init_kwargs") or {})
    kwargs.update(zip(_POSITIONAL, args, strict=False))
    model_type = kwargs.get("model_type", "DhariwalUNet")
    if model_type != "DhariwalUNet":
        raise PickleRefused(f"the network's model_type is {model_type!r}: only DhariwalUNet (ADM) is supported")
    if kwargs.get("augment_dim"):
        raise PickleRefused(f"the network has augment_dim={kwargs['augment_dim']}: augmentation labels are not "
                            "supported (EDM's ImageNet network has none)")
    config = imagenet_config()
    for key in _OURS:
        if key in kwargs and kwargs[key] is not None:
            value = kwargs[key]
            config[key] = tuple(int(v) for v in value) if key in ("channel_mult", "attn_resolutions") else value
    heads = _channels_per_head(net)
    if heads:
        config["channels_per_head"] = heads
    config["dropout"] = 0.0  # the teacher trained with dropout; it does nothing at inference
    return config


def _channels_per_head(obj) -> int | None:
    """Channels per attention head, from the first pickled block with attention (its ``num_heads`` and
    ``out_channels`` attributes): EDM's ADM fixes it at 64, a constructor argument would not say so."""
    if not isinstance(obj, PersistentObject | ModuleContainer):
        return None
    heads, out = obj.state.get("num_heads"), obj.state.get("out_channels")
    if isinstance(heads, int) and heads > 0 and isinstance(out, int) and out % heads == 0:
        return out // heads
    for child in (obj.state.get("_modules") or {}).values():
        found = _channels_per_head(child)
        if found:
            return found
    return None


def load_edm_network(path: str | os.PathLike, device: torch.device | str = "cpu"):
    """(EDMPrecond with the pickle's ``ema`` weights, its config). Loaded strictly: a key or shape that does
    not match raises ``pipeline.checkpoints.CheckpointMismatch``; a refused pickle raises PickleRefused."""
    from pipeline.checkpoints import load_into
    from pipeline.models.edm import EDMPrecond

    net_obj = _network(read_edm_pickle(path), path)
    config = edm_config(net_obj)
    state = collect_tensors(net_obj)
    try:
        with torch.device("meta"):
            net = EDMPrecond(**config)
    except (ValueError, TypeError) as exc:
        raise PickleRefused(f"{path}: the network's configuration {config} does not build: {exc}") from None
    load_into(net, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, source=path)
    return net.to(device).eval().requires_grad_(False), config
