"""PNG encoding of uint8 image arrays, with numpy and zlib.

Every generated image and x0 preview is encoded once, on the generation path. Pillow's PNG writer spends
most of its time outside zlib for small images (about 30 us of Python per image) and tries every row
filter for large ones; one "Up" filter for all rows, vectorised, gives files within about 1% of Pillow's
size on photographs, 1.6x faster at 640 px and several times faster at 16 px. Any PNG reader decodes the
result (8-bit grey, grey+alpha, RGB or RGBA; no interlacing).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

COMPRESS_LEVEL = 3  # zlib level: 6 (the default) is ~2x slower for a few % smaller files
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey, grey+alpha, RGB, RGBA)
_FILTER_UP = 2


def as_image(array) -> np.ndarray:
    """`array` as a C-contiguous uint8 (H, W, C) array with C in 1..4; ValueError naming what is wrong."""
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise ValueError(f"images must be uint8 arrays (H, W, C), got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in _COLOR_TYPE or 0 in a.shape:
        raise ValueError(f"images must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {a.shape}")
    return np.ascontiguousarray(a)


def encode_png(array, level: int = COMPRESS_LEVEL) -> bytes:
    """PNG file bytes of a uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array."""
    a = as_image(array)
    h, w, c = a.shape
    rows = a.reshape(h, w * c)
    scan = np.empty((h, w * c + 1), dtype=np.uint8)  # each row: its filter byte, then the filtered row
    scan[:, 0] = _FILTER_UP
    scan[:, 1:] = rows
    np.subtract(rows[1:], rows[:-1], out=scan[1:, 1:])  # Up: byte minus the byte above, modulo 256
    header = struct.pack(">IIBBBBB", w, h, 8, _COLOR_TYPE[c], 0, 0, 0)
    return b"".join((_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", zlib.compress(scan.data, level)),
                     _chunk(b"IEND", b"")))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))
