"""Colour by prompt meaning: k-means on the pooled text embeddings of a model's prompts.

Each distinct prompt is clustered once (runs that share a prompt share its point), on L2-normalised embeddings so
that k-means groups by direction (cosine), as text embeddings are meant to be compared. Every sample takes the
cluster of its prompt. The legend names each cluster by its most frequent prompt words: stop words removed,
counted once per prompt, and words found in nearly every prompt of the model ("photo of ...") left out because
they would name every cluster alike. Clusters are numbered by size, largest first.

Class models (demo, ImageNet) have no text embeddings: ``prompt_clusters`` raises ``NoTextEmbeddings`` and the
app offers class or category colouring instead.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from store.lru import LRU

__all__ = [
    "NoTextEmbeddings",
    "PromptClusters",
    "prompt_clusters",
    "cluster_prompts",
    "cluster_key",
    "prompt_words",
    "STOP_WORDS",
]

NO_CLUSTER = -1  # samples without a prompt (or whose prompt has no embedding)
COMMON_WORD_SHARE = 0.9  # a word in at least this share of all prompts does not name a cluster
MAX_K = 100

_STOP_TEXT = """
a about above across after again against all almost along also although am among an and another any anyone
are around as at away back be because been before behind being below beneath beside besides between beyond both
but by can could did do does doing done down during each either else even ever every few for from front
further get gets getting had has have having he her here hers herself him himself his how however i if in
inside into is it its itself just least less like made make many may me might more most much must my myself
near nearby neither next no nor not now of off on once one only onto or other others our ours ourselves out
outside over own per perhaps quite rather same several she should since so some something still such than
that the their theirs them themselves then there these they this those though through throughout thus to
together too toward towards under until up upon us very via was we well were what when where whether which
while who whom whose why will with within without would yet you your yours yourself yourselves
photo photograph photography image picture shot render rendering style styled detailed highly quality high
resolution hd uhd realistic photorealistic beautiful
"""
STOP_WORDS = frozenset(_STOP_TEXT.split())

_WORD_RE = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")


class NoTextEmbeddings(LookupError):
    """The store has no text embeddings for the model (a class model, or prompts saved without them)."""


@dataclass(frozen=True)
class PromptClusters:
    """Cluster of every sample and the legend.

    ``assignments``: sample_id, cluster (int; -1 = no prompt). ``legend``: cluster, name (top words), label
    (``"<cluster>: <name>"``), words (list), n_prompts, n_samples — one row per cluster, in cluster order.
    """

    key: str
    model: str
    k: int
    assignments: pd.DataFrame
    legend: pd.DataFrame

    def names(self) -> dict[int, str]:
        return dict(zip(self.legend["cluster"], self.legend["label"], strict=True))

    def labels(self) -> pd.Series:
        """The legend label of every sample, indexed by sample_id ("(no prompt)" for cluster -1)."""
        names = self.names()
        names[NO_CLUSTER] = "(no prompt)"
        return pd.Series([names[c] for c in self.assignments["cluster"]],
                         index=self.assignments["sample_id"].to_numpy(), name="cluster")


def prompt_words(prompt: str) -> list[str]:
    """Lower-case words of a prompt without stop words, one-letter words or numbers, in order, unique."""
    text = unicodedata.normalize("NFC", prompt or "").lower()
    out: list[str] = []
    for word in _WORD_RE.findall(text):
        word = word.replace("’", "'")
        if len(word) < 2 or word in STOP_WORDS or word in out:
            continue
        out.append(word)
    return out


def cluster_prompts(prompts: list[str], embeddings: np.ndarray, k: int, n_words: int = 3,
                    seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """k-means of distinct prompts: (cluster per prompt, legend with cluster, name, label, words, n_prompts).

    ``embeddings`` is (len(prompts), D). Clusters are renumbered by size (largest first, ties by first prompt).
    """
    from sklearn.cluster import KMeans

    n = len(prompts)
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise ValueError(f"embeddings must be ({n}, D) for {n} prompts, got shape {emb.shape}")
    if n == 0:
        raise ValueError("no prompts to cluster")
    k = _check_k(k, n)
    if not np.isfinite(emb).all():
        raise ValueError("text embeddings contain NaN or infinite values")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    emb = emb / np.where(norms > 0, norms, 1.0)
    if k == 1:
        raw = np.zeros(n, dtype=np.int64)
    else:
        raw = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(emb)
    # renumber: largest cluster first, ties by the position of the first prompt in the cluster
    sizes = np.bincount(raw, minlength=k)
    first = np.array([np.flatnonzero(raw == c)[0] if sizes[c] else n for c in range(k)])
    order = sorted(range(k), key=lambda c: (-sizes[c], first[c]))
    remap = np.empty(k, dtype=np.int64)
    remap[order] = np.arange(k)
    labels = remap[raw]

    words = [prompt_words(p) for p in prompts]
    df = Counter(w for ws in words for w in ws)
    common = {w for w, c in df.items() if k > 1 and n >= 5 and c / n >= COMMON_WORD_SHARE}
    rows = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        counts = Counter(w for i in members for w in words[i] if w not in common)
        top = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n_words]]
        name = ", ".join(top) if top else f"cluster {c}"
        rows.append(dict(cluster=c, name=name, label=f"{c}: {name}", words=top, n_prompts=len(members)))
    return labels, pd.DataFrame(rows, columns=["cluster", "name", "label", "words", "n_prompts"])


def _check_k(k, n_prompts: int) -> int:
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise ValueError(f"k must be an integer, got {k!r}") from None
    hi = min(MAX_K, n_prompts)
    if not 1 <= k <= hi:
        raise ValueError(f"k={k} is out of range: choose k between 1 and {hi} "
                         f"({n_prompts} distinct prompts{'' if n_prompts <= MAX_K else f', at most {MAX_K}'})")
    return k


# ---------------------------------------------------------------------------------------------------- store


def cluster_key(store, model: str, k: int, run_ids=None, n_words: int = 3, seed: int = 0) -> str:
    """Explicit cache key: store, model, runs, k, legend size, seed and the data version of the model's
    samples and text embeddings (a new batch or a rewritten prompts file changes it)."""
    runs = None if run_ids is None else sorted(str(r) for r in run_ids)
    parts = repr((str(Path(store.root).resolve()), model, runs, int(k), int(n_words), int(seed),
                  store.data_version(model, run_ids=runs, scope="model")))
    return f"clusters-{model}-k{int(k)}-{hashlib.sha1(parts.encode()).hexdigest()[:16]}"


_CACHE: LRU[str, PromptClusters] = LRU(16)


def prompt_clusters(store, model: str, k: int, run_ids=None, n_words: int = 3, seed: int = 0) -> PromptClusters:
    """Cluster the prompts of ``model`` (optionally some runs) into ``k`` groups; cached by ``cluster_key``.

    Raises ``NoTextEmbeddings`` when the store holds none for these runs, ``ValueError`` for a bad ``k``.
    """
    key = cluster_key(store, model, k, run_ids, n_words, seed)
    return _CACHE.get_or_build(key, lambda: _compute(store, model, k, run_ids, n_words, seed, key))


def _compute(store, model, k, run_ids, n_words, seed, key) -> PromptClusters:
    runs = None if run_ids is None else sorted(str(r) for r in run_ids)
    try:
        frame, matrix = store.text_embeddings(model, run_ids=runs)
    except ValueError as exc:  # runs whose text encoders differ in width cannot be stacked
        raise ValueError(f"the text embeddings of model {model!r} differ in size across runs ({exc}); "
                         "choose runs made with the same base model") from None
    if len(frame) == 0 or matrix.size == 0:
        scope = f" (runs {', '.join(runs)})" if runs else ""
        raise NoTextEmbeddings(
            f"no text embeddings in this store for model {model!r}{scope}: it was not generated from prompts. "
            "Colour by class or category instead.")
    prompts = [unicodedata.normalize("NFC", str(p)).strip() for p in frame["prompt"].fillna("")]
    # one point per distinct prompt text (the first embedding seen for it)
    distinct: dict[str, int] = {}
    for i, p in enumerate(prompts):
        distinct.setdefault(p, i)
    texts = list(distinct)
    labels, legend = cluster_prompts(texts, matrix[list(distinct.values())], k, n_words, seed)
    by_text = dict(zip(texts, labels.tolist(), strict=True))
    by_index = {(run, int(pi)): by_text[p] for run, pi, p in zip(frame["run_id"], frame["prompt_index"], prompts,
                                                                  strict=True)}

    samples = store.samples(model=model, run_ids=runs, columns=["sample_id", "run_id", "prompt_index", "prompt"])
    clusters = []
    for run, pi, prompt in zip(samples["run_id"], samples["prompt_index"], samples["prompt"], strict=True):
        c = by_index.get((run, int(pi))) if pd.notna(pi) else None
        if c is None and isinstance(prompt, str):
            c = by_text.get(unicodedata.normalize("NFC", prompt).strip())
        clusters.append(NO_CLUSTER if c is None else c)
    assignments = pd.DataFrame({"sample_id": samples["sample_id"].astype(str).to_numpy(),
                                "cluster": np.asarray(clusters, dtype=np.int64)})
    counts = assignments["cluster"].value_counts()
    legend["n_samples"] = [int(counts.get(c, 0)) for c in legend["cluster"]]
    return PromptClusters(key=key, model=model, k=int(k), assignments=assignments, legend=legend)
