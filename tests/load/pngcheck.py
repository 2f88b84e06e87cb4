"""Decode a PNG screenshot (8-bit RGB/RGBA, non-interlaced) with zlib + struct only.

Enough to tell a rendered report from a blank page: the tests count distinct colours and
the share of pixels that differ from the background. No image library needed.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class PngStats:
    width: int
    height: int
    distinct_colours: int
    background: tuple[int, ...]
    non_background_share: float


def _paeth_row(row: bytearray, prev: bytes, bpp: int) -> None:
    for i in range(len(row)):
        a = row[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        if pa <= pb and pa <= pc:
            pred = a
        elif pb <= pc:
            pred = b
        else:
            pred = c
        row[i] = (row[i] + pred) & 0xFF


def decode_png(path: Path) -> np.ndarray:
    """The image as an array of shape (height, width, channels), uint8."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    pos, idat = 8, bytearray()
    width = height = channels = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0, "only 8-bit non-interlaced PNGs"
            channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    raw = zlib.decompress(bytes(idat))
    stride = width * channels
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind = raw[start]
        line = np.frombuffer(raw, np.uint8, stride, start + 1)
        if kind == 0:
            row = line.copy()
        elif kind == 1:  # Sub: running sum per channel
            row = (
                np.cumsum(line.reshape(width, channels).astype(np.uint32), axis=0) & 0xFF
            ).astype(np.uint8).reshape(stride)
        elif kind == 2:  # Up
            row = line + np.frombuffer(prev, np.uint8)
        elif kind == 3:  # Average
            buf = bytearray(line.tobytes())
            for i in range(stride):
                left = buf[i - channels] if i >= channels else 0
                buf[i] = (buf[i] + ((left + prev[i]) >> 1)) & 0xFF
            row = np.frombuffer(bytes(buf), np.uint8)
        elif kind == 4:  # Paeth
            buf = bytearray(line.tobytes())
            _paeth_row(buf, prev, channels)
            row = np.frombuffer(bytes(buf), np.uint8)
        else:
            raise AssertionError(f"unknown PNG filter {kind}")
        out[y] = row
        prev = row.tobytes()
    return out.reshape(height, width, channels)


def png_stats(path: Path) -> PngStats:
    image = decode_png(path)
    height, width, channels = image.shape
    flat = image.reshape(-1, channels)
    packed = np.zeros(flat.shape[0], dtype=np.uint32)
    for c in range(min(channels, 3)):
        packed = (packed << 8) | flat[:, c].astype(np.uint32)
    values, counts = np.unique(packed, return_counts=True)
    top = int(values[np.argmax(counts)])
    background = tuple((top >> (8 * (2 - c))) & 0xFF for c in range(3))
    share = 1.0 - float(counts.max()) / flat.shape[0]
    return PngStats(width, height, len(values), background, share)
