"""Finding and loading generator checkpoints: local files, local run folders, or ``hf://`` hub references.

A DMD2 run folder (accelerate ``save_state`` output) holds the generator as ``pytorch_model.bin`` (or
``model.safetensors`` with newer accelerate) beside the much larger guidance model and optimizer state;
only the generator file is ever read or downloaded.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from torch import nn

__all__ = [
    "DMD2_IMAGENET_CHECKPOINTS",
    "GENERATOR_FILES",
    "CheckpointMismatch",
    "HubRef",
    "load_checkpoint",
    "load_into",
    "load_state_dict_file",
    "parse_hub_ref",
    "resolve_checkpoint",
    "sha256_of",
]

# Generator file names inside a run folder, in order of preference (safetensors cannot run code).
GENERATOR_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
STRIPPED_PREFIXES = ("module.", "feedforward_model.")

_IMAGENET = "hf://tianweiy/DMD2/model/imagenet/"
DMD2_IMAGENET_CHECKPOINTS = {
    "fid1.28": _IMAGENET
    + "imagenet_gan_classifier_genloss3e-3_diffusion1000_lr5e-7_resume_fid1.28_checkpoint_model_548000",
    "fid1.51": _IMAGENET
    + "imagenet_gan_classifier_genloss3e-3_diffusion1000_lr2e-6_scratch_fid1.51_checkpoint_model_193500",
    "fid2.61": _IMAGENET + "imagenet_lr2e-6_scratch_fid2.61_checkpoint_model_405500",
}
"""The released DMD2 ImageNet-64 generators (run folders on the hub), best first."""


class CheckpointMismatch(RuntimeError):
    """The checkpoint's keys or shapes do not match the model.

    The message lists short lists in full; a longer one is summarised (count by key prefix, the first few)
    and every list is written to `report_path`, a text file in the temporary folder (None when all fit)."""

    def __init__(self, missing: list[str], unexpected: list[str], mismatched: dict[str, tuple[tuple, tuple]],
                 source: str | os.PathLike | None = None):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        self.source = None if source is None else os.fspath(source)
        sections = [
            ("missing keys (in the model, not in the file)", missing),
            ("unexpected keys (in the file, not in the model)", unexpected),
            ("shape mismatches (model vs file)", [f"{k}: {a} vs {b}" for k, (a, b) in mismatched.items()]),
        ]
        self.report_path: Path | None = None
        long = any(len(items) > LISTING_LIMIT for _, items in sections)
        note = ""
        if long:
            try:
                self.report_path = _write_report(self.source, sections)
                note = f"  full lists: {self.report_path}"
            except OSError as exc:
                note = f"  (the full lists could not be written: {exc})"
        parts = ["checkpoint does not match the model" + (f" ({self.source})" if self.source else "")]
        for title, items in sections:
            parts += _listing(title, items)
        if note:
            parts.append(note)
        super().__init__("\n".join(parts))


LISTING_LIMIT = 10  # a list this long or shorter is printed in full
LISTING_FIRST = 5  # a longer one: its count by prefix and its first few


def _prefix(key: str) -> str:
    """The group of a key for a summary: its first two dotted parts (`model.enc`, `down_blocks.1`)."""
    parts = key.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0]


def _listing(title: str, items: list[str]) -> list[str]:
    if not items:
        return []
    if len(items) <= LISTING_LIMIT:
        return [f"  {len(items)} {title}:"] + [f"    {item}" for item in items]
    counts = Counter(_prefix(item.split(":")[0]) for item in items)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{p}.* {n}" for p, n in ranked[:8]) + (
        f", {len(ranked) - 8} more prefixes" if len(ranked) > 8 else "")
    return ([f"  {len(items)} {title}, by prefix: {shown}", f"    first {LISTING_FIRST}:"]
            + [f"    {item}" for item in items[:LISTING_FIRST]])


def _write_report(source: str | None, sections: list[tuple[str, list[str]]]) -> Path:
    """Every list of a mismatch, one item a line, in a new file in the temporary folder."""
    import tempfile

    fd, name = tempfile.mkstemp(prefix="checkpoint-mismatch-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(f"checkpoint: {source or 'unknown'}\n")
        for title, items in sections:
            f.write(f"\n{len(items)} {title}:\n")
            f.writelines(f"{item}\n" for item in items)
    return Path(name)


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    path: str  # inside the repo, "" for the root
    revision: str | None = None

    @property
    def is_file(self) -> bool:
        return PurePosixPath(self.path).suffix in WEIGHT_SUFFIXES


def parse_hub_ref(ref: str) -> HubRef:
    """Parse ``hf://<owner>/<repo>[@<revision>][/<path in repo>]``."""
    if not ref.startswith("hf://"):
        raise ValueError(f"not a hub reference (expected hf://<owner>/<repo>/<path>): {ref!r}")
    parts = [p for p in ref.removeprefix("hf://").split("/") if p]
    if len(parts) < 2:
        raise ValueError(f"hub reference needs an owner and a repo, e.g. hf://tianweiy/DMD2/<path>: {ref!r}")
    owner, repo, rest = parts[0], parts[1], parts[2:]
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    if any(p in (".", "..") for p in rest):
        raise ValueError(f"hub path may not contain '.' or '..': {ref!r}")
    return HubRef(f"{owner}/{repo}", "/".join(rest), revision or None)


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.HF_HUB_OFFLINE or flag.strip().lower() in ("1", "true", "yes", "on")


def _hub_cache() -> str:
    from huggingface_hub import constants

    # Read the environment at call time: huggingface_hub only reads it once, at import.
    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def _resolve_hub(ref: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    hub = parse_hub_ref(ref)
    offline, cache = _offline(), _hub_cache()
    if hub.is_file:
        candidates = [hub.path]
    else:
        candidates = [str(PurePosixPath(hub.path) / name) if hub.path else name for name in GENERATOR_FILES]
    not_cached = []
    for filename in candidates:
        try:
            path = hf_hub_download(
                hub.repo_id, filename, revision=hub.revision, cache_dir=cache, local_files_only=offline
            )
            return Path(path)
        except LocalEntryNotFoundError:
            not_cached.append(filename)
        except EntryNotFoundError:
            continue
    if not_cached:
        why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
        raise FileNotFoundError(
            f"{ref}: {' or '.join(not_cached)} is not in the Hugging Face cache ({cache}) and {why}. "
            "Download it once with network access, or pass a local file or folder to --checkpoint."
        )
    raise FileNotFoundError(f"{ref}: no generator file in {hub.repo_id} (looked for {', '.join(candidates)})")


def resolve_checkpoint(ref: str | os.PathLike) -> Path:
    """Return the local path of the generator weights that ``ref`` names.

    ``ref`` is a weights file, a run folder holding ``model.safetensors`` or ``pytorch_model.bin``, or
    ``hf://<owner>/<repo>[@<revision>]/<path>`` (a file, or a run folder of which only the generator file
    is downloaded, into the Hugging Face cache so that it is reused and an interrupted download resumes).
    """
    ref_str = os.fspath(ref)
    if ref_str.startswith("hf://"):
        return _resolve_hub(ref_str)
    path = Path(ref_str).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in GENERATOR_FILES:
            if (path / name).is_file():
                return path / name
        present = sorted(p.name for p in path.iterdir())[:20]
        raise FileNotFoundError(
            f"{path} holds no generator file (looked for {', '.join(GENERATOR_FILES)}); it contains: {present}"
        )
    raise FileNotFoundError(
        f"checkpoint not found: {ref_str!r} (give a weights file, a run folder, or hf://<owner>/<repo>/<path>)"
    )


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict onto the CPU without running pickled code, dropping a wrapper prefix.

    ``.safetensors`` files are read with safetensors; anything else with ``torch.load(weights_only=True)``.
    A leading ``module.`` (DDP) or ``feedforward_model.`` (DMD2's training wrapper) shared by every key is
    removed.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except OSError:
            raise
        except Exception as exc:  # SafetensorError for text, truncated or damaged files
            raise ValueError(f"cannot read {path} as a safetensors file (is it truncated or not a weights file?): "
                             f"{first_line(exc)}") from exc
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # the unpickler raises several types; say what went wrong and where
            raise ValueError(f"cannot read {path} as a weights-only torch checkpoint: {exc}") from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return strip_prefixes(dict(state))


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and state:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k.removeprefix(prefix): v for k, v in state.items()}
                changed = True
    return state


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
              source: str | os.PathLike | None = None) -> nn.Module:
    """Load strictly, or raise ``CheckpointMismatch`` listing missing, unexpected and mis-shaped keys.

    A model built on the ``meta`` device takes the checkpoint's tensors as they are (``assign=True``),
    which avoids initialising hundreds of millions of parameters only to overwrite them.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = {
        k: (tuple(own[k].shape), tuple(v.shape))
        for k, v in state_dict.items()
        if k in own and tuple(own[k].shape) != tuple(v.shape)
    }
    if missing or unexpected or mismatched:
        raise CheckpointMismatch(missing, unexpected, mismatched, source)
    on_meta = any(t.is_meta for t in own.values())
    model.load_state_dict(state_dict, strict=True, assign=on_meta)
    return model


def load_checkpoint(model: nn.Module, ref: str | os.PathLike) -> Path:
    """Resolve ``ref``, load it into ``model`` strictly, and return the file that was read."""
    path = resolve_checkpoint(ref)
    load_into(model, load_state_dict_file(path), source=path)
    return path


_sha_memo: dict[tuple[str, int, int], str] = {}
_sha_lock = threading.Lock()


def sha256_of(path: str | os.PathLike, chunk_size: int = 8 << 20) -> str:
    """SHA-256 of a file, streamed; remembered per (path, size, mtime) for this process."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _sha_lock:
        if key in _sha_memo:
            return _sha_memo[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    value = digest.hexdigest()
    with _sha_lock:
        _sha_memo[key] = value
    return value
