"""Colour by prompt meaning: k-means on text embeddings, legends named by prompt words, caching, class models."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.clusters import (
    NO_CLUSTER,
    NoTextEmbeddings,
    cluster_key,
    cluster_prompts,
    prompt_clusters,
    prompt_words,
)
from store import RunWriter, Store

TOPICS = {
    "vehicles": ["a red sports car on a road", "a vintage car in the rain", "a racing car at night",
                 "an old car parked by a lake"],
    "animals": ["a golden dog in the snow", "a sleepy dog on a sofa", "a dog chasing a ball",
                "a small dog wearing a hat"],
    "food": ["a bowl of ramen soup", "a plate of ramen noodles", "spicy ramen with egg", "ramen in a paper cup"],
}


def topic_embeddings(seed=0, dim=16, noise=0.05):
    """Prompts of three topics: each topic's embeddings sit around its own direction."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(TOPICS), dim))
    prompts, rows, topic_of = [], [], []
    for t, (topic, items) in enumerate(TOPICS.items()):
        for p in items:
            prompts.append(p)
            rows.append(centers[t] * rng.uniform(0.5, 3.0) + rng.normal(0, noise, dim))  # scale: cosine ignores it
            topic_of.append(topic)
    return prompts, np.asarray(rows, np.float32), topic_of


def write_prompt_run(root, run_id, prompts, emb, categories, model="t2i", repeat=2, with_embeddings=True):
    n = len(prompts) * repeat
    manifest = dict(run_id=run_id, model=model, family="test", checkpoint="x", checkpoint_sha256="x",
                    layers=["mid"], seed=1, num_samples=n, reduce={"mid": "mean"}, settings={"steps": 1})
    with RunWriter(root, manifest) as w:
        pidx = np.arange(n) % len(prompts)
        samples = [dict(seed=i, prompt=prompts[p], prompt_index=int(p), category=categories[p], label=prompts[p],
                        num_steps=1) for i, p in enumerate(pidx)]
        acts = {"mid": [dict(step=0, timestep=999.0, sigma=14.6, reduce="mean", layer_shape=(4, 1, 1),
                             array=np.zeros((n, 4), np.float32))]}
        w.write_batch(list(range(n)), samples, [np.zeros((8, 8, 3), np.uint8)] * n, acts)
        if with_embeddings:
            w.write_text_embeddings({"prompt_index": list(range(len(prompts))), "prompt": prompts,
                                     "category": categories, "embedding": emb})


def test_prompt_words():
    assert prompt_words("A photo of a red Car, and a RED dog!") == ["red", "car", "dog"]
    assert prompt_words("Un café à Paris, 1920") == ["un", "café", "paris"]
    assert prompt_words("the dog's toy") == ["dog's", "toy"]
    assert prompt_words("") == []


def test_clusters_recover_topics_and_name_them():
    prompts, emb, topic_of = topic_embeddings()
    labels, legend = cluster_prompts(prompts, emb, k=3)
    # every topic lands in exactly one cluster and every cluster holds one topic
    pairs = {(topic, int(c)) for topic, c in zip(topic_of, labels, strict=True)}
    assert len(pairs) == 3 and len({c for _, c in pairs}) == 3
    names = {topic: legend.loc[legend["cluster"] == c, "name"].item() for topic, c in pairs}
    assert names["vehicles"].startswith("car")
    assert names["animals"].startswith("dog")
    assert names["food"].startswith("ramen")
    assert list(legend.columns) == ["cluster", "name", "label", "words", "n_prompts"]
    assert legend["label"].str.match(r"^\d+: ").all()
    assert legend["n_prompts"].sum() == len(prompts)


def test_clusters_are_numbered_by_size_and_deterministic():
    prompts, emb, _ = topic_embeddings()
    prompts = prompts + ["a fast car", "a blue car"]
    emb = np.vstack([emb, emb[0:2]])
    labels, legend = cluster_prompts(prompts, emb, k=3, seed=0)
    assert list(legend["n_prompts"]) == sorted(legend["n_prompts"], reverse=True)
    again, _ = cluster_prompts(prompts, emb, k=3, seed=0)
    assert (labels == again).all()


def test_words_shared_by_every_prompt_do_not_name_clusters():
    prompts, emb, _ = topic_embeddings()
    prompts = [f"cinematic scene, {p}" for p in prompts]
    _, legend = cluster_prompts(prompts, emb, k=3)
    assert not any("cinematic" in w or "scene" in w for words in legend["words"] for w in words)
    _, one = cluster_prompts(prompts, emb, k=1)  # with one cluster, nothing is "common to all clusters"
    assert "cinematic" in one["words"].item()


def test_bad_k_and_shapes():
    prompts, emb, _ = topic_embeddings()
    with pytest.raises(ValueError, match="between 1 and 12"):
        cluster_prompts(prompts, emb, k=13)
    with pytest.raises(ValueError, match="between 1 and 12"):
        cluster_prompts(prompts, emb, k=0)
    with pytest.raises(ValueError, match="integer"):
        cluster_prompts(prompts, emb, k="many")
    with pytest.raises(ValueError, match="shape"):
        cluster_prompts(prompts, emb[:3], k=2)
    with pytest.raises(ValueError, match="NaN"):
        cluster_prompts(prompts, np.full_like(emb, np.nan), k=2)


def test_prompt_clusters_from_a_store(tmp_path):
    prompts, emb, topic_of = topic_embeddings()
    write_prompt_run(tmp_path, "run-a", prompts, emb, topic_of)
    # a second run with the same prompts in another order and one new prompt: one point per distinct prompt
    order = [5, 0, 9, 3]
    write_prompt_run(tmp_path, "run-b", [prompts[i] for i in order] + ["a noodle shop sign"],
                     np.vstack([emb[order], emb[8:9]]), [topic_of[i] for i in order] + ["food"])
    store = Store(tmp_path)
    result = prompt_clusters(store, "t2i", k=3)
    samples = store.samples(model="t2i")
    assert list(result.assignments["sample_id"]) == list(samples["sample_id"])
    assert (result.assignments["cluster"] != NO_CLUSTER).all()
    by_prompt = dict(zip(samples["prompt"], result.assignments["cluster"], strict=True))
    # identical prompts in different runs share the cluster; topics stay together
    for topic in TOPICS:
        assert len({by_prompt[p] for p, t in zip(prompts, topic_of, strict=True) if t == topic}) == 1
    assert by_prompt["a noodle shop sign"] == by_prompt["a bowl of ramen soup"]
    assert result.legend["n_samples"].sum() == len(samples)
    labels = result.labels()
    assert labels.index.tolist() == list(samples["sample_id"])
    assert set(labels) == set(result.legend["label"])
    # only one run
    only_b = prompt_clusters(store, "t2i", k=2, run_ids=["run-b"])
    assert set(only_b.assignments["sample_id"].str[:5]) == {"run-b"}


def test_cache_key_changes_with_data_and_parameters(tmp_path):
    prompts, emb, topic_of = topic_embeddings()
    write_prompt_run(tmp_path, "run-a", prompts, emb, topic_of)
    store = Store(tmp_path)
    first = prompt_clusters(store, "t2i", k=3)
    assert prompt_clusters(store, "t2i", k=3) is first  # cached
    assert cluster_key(store, "t2i", 3) == first.key
    assert cluster_key(store, "t2i", 4) != first.key
    assert cluster_key(store, "t2i", 3, run_ids=["run-a"]) != first.key
    write_prompt_run(tmp_path, "run-c", prompts[:3], emb[:3], topic_of[:3])
    assert cluster_key(store, "t2i", 3) != first.key
    second = prompt_clusters(store, "t2i", k=3)
    assert second is not first and len(second.assignments) == len(first.assignments) + 6


def test_class_models_have_no_text_embeddings(tmp_path):
    from store_fixtures import write_run

    write_run(tmp_path, "c1", model="demo", n=4)
    with pytest.raises(NoTextEmbeddings, match="no text embeddings in this store for model 'demo'"):
        prompt_clusters(Store(tmp_path), "demo", k=2)
    prompts, emb, topic_of = topic_embeddings()
    write_prompt_run(tmp_path, "no-emb", prompts, emb, topic_of, model="bare", with_embeddings=False)
    with pytest.raises(NoTextEmbeddings, match="class or category"):
        prompt_clusters(Store(tmp_path), "bare", k=2)
