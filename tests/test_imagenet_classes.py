"""ImageNet class names: the standard ILSVRC index order."""

import numpy as np
import pytest

from pipeline.imagenet_classes import class_label, class_name, class_names, class_wnid, find_classes


@pytest.mark.parametrize(
    "index, name",
    [(0, "tench"), (1, "goldfish"), (207, "golden retriever"), (281, "tabby"), (999, "toilet tissue")],
)
def test_known_indices(index, name):
    assert class_name(index) == name
    assert class_name(np.int64(index)) == name


def test_order_is_sorted_wordnet_ids():
    wnids = [class_wnid(i) for i in range(1000)]
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert wnids[0] == "n01440764" and wnids[207] == "n02099601"
    assert len(class_names()) == 1000 and all(class_names())


def test_label_and_search():
    assert class_label(207) == "207: golden retriever"
    assert find_classes("crane") == [134, 517]  # the bird and the machine
    assert find_classes("n02099601") == [207]
    assert find_classes("  ") == []


@pytest.mark.parametrize("bad", [-1, 1000])
def test_out_of_range_index_is_refused(bad):
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        class_name(bad)
