"""Forward hooks that record what chosen layers compute, tagged with the sampling step.

A hook takes element 0 of tuple outputs, detaches, reduces on the device and keeps a *copy*: the model may
mutate its tensors after the hook returns, and on the CPU `.cpu()` is no copy at all. The reduced tensors
stay on the device until `pop()`, so recording adds no device-to-host sync inside the forward pass.
"""

from __future__ import annotations

import contextlib
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

REDUCTIONS = ("auto", "mean", "pool4", "full")
AUTO_FULL_MAX_VALUES = 65_536  # 128 KiB per sample in float16


def resolve_reduce(reduce: str, layer_shape: tuple[int, ...]) -> str:
    """`auto` keeps the full map when it has at most 65,536 values, else a 4x4 pooled grid."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduce!r}; choose one of {', '.join(REDUCTIONS)}")
    if len(layer_shape) < 3:  # vectors (embeddings) are stored as they are
        return "full"
    if reduce == "auto":
        return "full" if int(np.prod(layer_shape)) <= AUTO_FULL_MAX_VALUES else "pool4"
    return reduce


def stored_shape(reduce: str, layer_shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(layer_shape) < 3 or reduce == "full":
        return tuple(layer_shape)
    if reduce == "mean":
        return (layer_shape[0],)
    return (layer_shape[0], 4, 4)


def bytes_per_sample(reduce: str, layer_shape: tuple[int, ...]) -> int:
    return 2 * int(np.prod(stored_shape(resolve_reduce(reduce, layer_shape), layer_shape)))


def reduce_tensor(t: torch.Tensor, how: str) -> torch.Tensor:
    """A new tensor (never a view of `t`) holding the reduction of a (B, C, H, W) activation."""
    if t.ndim < 4 or how == "full":
        return t.detach().clone()
    if how == "mean":
        return t.detach().float().mean(dim=(2, 3))
    if how == "pool4":
        return F.adaptive_avg_pool2d(t.detach().float(), 4)
    raise ValueError(f"unknown reduction {how!r}")


@dataclass
class _Record:
    layer: str
    step: int
    timestep: float | None
    sigma: float | None
    layer_shape: tuple[int, ...]
    reduce: str
    value: torch.Tensor


class _LayerHooks:
    """Forward hooks on `self.layers` (friendly name -> module path of `self.root`), made by `_make_hook(name)`,
    registered for the duration of a `with` (first among the module's hooks when `PREPEND`)."""

    PREPEND = False

    def __enter__(self):
        for name, path in self.layers.items():
            module = self.root.get_submodule(path)
            self._handles.append(module.register_forward_hook(self._make_hook(name), prepend=self.PREPEND))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class Recorder(_LayerHooks):
    """Register hooks on `layers` (friendly name -> module path of `root`) for the duration of a `with`.

    Hooks only record inside `with recorder.step(i, timestep=..., sigma=...)`, so a warm-up or a shape probe
    outside a step leaves no trace. With `steps` (step indices, None: all), the other steps leave no trace
    either: a long sampler (an 18-step teacher) can keep only the steps a map needs.
    """

    def __init__(self, root: torch.nn.Module, layers: dict[str, str], reduce: dict[str, str] | str = "auto",
                 steps=None):
        self.root = root
        self.layers = dict(layers)
        self.reduce = reduce if isinstance(reduce, dict) else {name: reduce for name in layers}
        self.steps = None if steps is None else frozenset(int(s) for s in steps)
        self._handles: list = []
        self._step: tuple[int, float | None, float | None] | None = None
        self._records: list[_Record] = []

    @contextmanager
    def step(self, step: int, timestep: float | None = None, sigma: float | None = None):
        if self.steps is not None and int(step) not in self.steps:
            self._step = None  # a step not recorded: the hooks stay silent
        else:
            self._step = (int(step), None if timestep is None else float(timestep),
                          None if sigma is None else float(sigma))
        try:
            yield
        finally:
            self._step = None

    def _make_hook(self, name: str):
        def hook(_module, _inputs, output):
            if self._step is None:
                return
            out = output[0] if isinstance(output, tuple | list) else output
            layer_shape = tuple(out.shape[1:])
            how = resolve_reduce(self.reduce.get(name, "auto"), layer_shape)
            step, timestep, sigma = self._step
            self._records.append(_Record(name, step, timestep, sigma, layer_shape, how,
                                         reduce_tensor(out, how)))
        return hook

    def pop(self) -> dict[str, list[dict]]:
        """Everything recorded since the last pop, per layer, as float16 numpy arrays (B, ...)."""
        out: dict[str, list[dict]] = {}
        for rec in self._records:
            array = rec.value.to("cpu", torch.float16).numpy()
            out.setdefault(rec.layer, []).append(dict(
                step=rec.step, timestep=rec.timestep, sigma=rec.sigma, reduce=rec.reduce,
                layer_shape=rec.layer_shape, array=array))
        self._records.clear()
        return out


class Intervention(_LayerHooks):
    """Forward hooks that change what chosen layers output, at chosen sampling steps (the edits of
    pipeline/edit.py): `edits` maps a friendly layer name to `fn(step, output) -> new output` (a tensor of
    the output's shape, or None to keep it). The hooks run before any other hook of the module, so a
    `Recorder` on the same layer records the changed output, which is what the rest of the network sees.

    Like `Recorder`, it acts only inside `with intervention.step(i, ...)`; `tag(recorder, intervention)`
    gives one object whose `step` enters both, for an adapter's `sample(..., recorder)`.
    """

    PREPEND = True

    def __init__(self, root: torch.nn.Module, layers: dict[str, str], edits: dict):
        unknown = sorted(set(edits) - set(layers))
        if unknown:
            raise ValueError(f"edits on layers without a module path: {unknown}")
        self.root = root
        self.layers = {name: layers[name] for name in edits}
        self.edits = dict(edits)
        self._handles: list = []
        self._step: int | None = None

    @contextmanager
    def step(self, step: int, timestep: float | None = None, sigma: float | None = None):
        self._step = int(step)
        try:
            yield
        finally:
            self._step = None

    def _make_hook(self, name: str):
        fn = self.edits[name]

        def hook(_module, _inputs, output):
            if self._step is None:
                return None
            first = output[0] if isinstance(output, tuple | list) else output
            new = fn(self._step, first)
            if new is None:
                return None
            if tuple(new.shape) != tuple(first.shape):
                raise ValueError(f"edit of layer {name!r} returned shape {tuple(new.shape)}, "
                                 f"the layer outputs {tuple(first.shape)}")
            new = new.to(first.dtype)
            if isinstance(output, tuple | list):
                return type(output)([new, *output[1:]])
            return new
        return hook


class _Tags:
    def __init__(self, taggers):
        self.taggers = taggers

    @contextmanager
    def step(self, step: int, timestep: float | None = None, sigma: float | None = None):
        with contextlib.ExitStack() as stack:
            for t in self.taggers:
                stack.enter_context(t.step(step, timestep=timestep, sigma=sigma))
            yield


def tag(*taggers):
    """One object with a `step(i, timestep=, sigma=)` context that enters each of `taggers`' (Recorders,
    Interventions) in order: what an adapter's `sample` takes as its recorder."""
    return _Tags([t for t in taggers if t is not None])
