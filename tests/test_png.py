"""`store.png.encode_png` against Pillow's decoder: exact pixels for every supported layout and size."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from store.png import encode_png


def decode(data: bytes) -> tuple[str, np.ndarray]:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.mode, np.asarray(im)


@pytest.mark.parametrize("shape, mode", [((5, 7), "L"), ((5, 7, 1), "L"), ((5, 7, 2), "LA"), ((5, 7, 3), "RGB"),
                                         ((5, 7, 4), "RGBA"), ((1, 1, 3), "RGB"), ((64, 48, 3), "RGB")])
def test_pixels_round_trip_exactly(shape, mode):
    a = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    got_mode, got = decode(encode_png(a))
    assert got_mode == mode
    np.testing.assert_array_equal(got, a.reshape(got.shape))


def test_up_filter_wraps_modulo_256_and_views_are_copied():
    a = np.zeros((4, 6, 3), np.uint8)
    a[1::2] = 255  # rows alternate 0 and 255: differences of +255 and -255 wrap
    strided = np.zeros((8, 6, 3), np.uint8)
    strided[::2] = a
    for image in (a, strided[::2], np.asfortranarray(a)):
        np.testing.assert_array_equal(decode(encode_png(image))[1], a)


def test_photographs_stay_as_small_as_pillows():
    from sklearn.datasets import load_sample_images

    photo = load_sample_images().images[0][:256, :256]
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="PNG", compress_level=3)
    ours = encode_png(photo)
    np.testing.assert_array_equal(decode(ours)[1], photo)
    assert len(ours) < 1.05 * len(buf.getvalue())


@pytest.mark.parametrize("bad, match", [(np.zeros((4, 4), np.float32), "uint8"), (np.zeros((4, 4, 5), np.uint8),
                                        "shape"), (np.zeros((4,), np.uint8), "shape"), (np.zeros((0, 4, 3), np.uint8),
                                                                                         "shape")])
def test_bad_arrays_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        encode_png(bad)
