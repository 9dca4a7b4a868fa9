"""A procedural image dataset: any size, any number of classes, reproducible from a seed.

Each class is a combination of a shape (disk, square, triangle, ring, cross), a stripe texture
(orientation and frequency) and a hue. The shape and the texture survive the augmentations of
section 3.3 (crops, flips, colour jitter, grayscale), so self-supervised pretraining has real
structure to find; the hue helps only until grayscale removes it. Position, size, rotation,
colour and background vary per image. Tests and the ``smoke`` profile run the whole pipeline on
it without any file.
"""
from __future__ import annotations

import numpy as np

SHAPES = ("disk", "square", "triangle", "ring", "cross")
ORIENTATIONS = 4  # stripe angles 0, 45, 90, 135 degrees
GOLDEN = 0.6180339887498949


def class_attributes(num_classes: int) -> dict[str, np.ndarray]:
    """Shape index, stripe angle (radians), stripe frequency (cycles per object) and hue per class.

    Depends on the class index only, so the train and test parts share the class definitions.
    """
    c = np.arange(num_classes)
    return {
        "shape": c % len(SHAPES),
        "angle": ((c // len(SHAPES)) % ORIENTATIONS) * (np.pi / ORIENTATIONS),
        "freq": 2.0 + 1.5 * ((c // (len(SHAPES) * ORIENTATIONS)) % 3),
        "hue": (c * GOLDEN) % 1.0,
    }


def generate(n: int, num_classes: int, size: int = 32, channels: int = 3, seed: int = 0,
             chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (n, size, size, channels) uint8 and their labels (n,) int64, balanced classes."""
    if n < 1 or num_classes < 2 or size < 8 or channels not in (1, 3):
        raise ValueError("synthetic data needs n >= 1, num_classes >= 2, size >= 8, channels 1 or 3")
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % num_classes
    rng.shuffle(labels)
    images = np.empty((n, size, size, channels), dtype=np.uint8)
    attrs = class_attributes(num_classes)
    for start in range(0, n, chunk):
        y = labels[start:start + chunk]
        images[start:start + len(y)] = _render(y, attrs, size, channels, rng)
    return images, labels


def _render(y: np.ndarray, attrs: dict, size: int, channels: int,
            rng: np.random.Generator) -> np.ndarray:
    m = len(y)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    gy, gx = np.meshgrid(grid, grid, indexing="ij")  # (size, size), in [0, 1]
    col = lambda a: a.astype(np.float32)[:, None, None]  # noqa: E731  (m,) -> (m, 1, 1)

    cx, cy = col(rng.uniform(0.35, 0.65, m)), col(rng.uniform(0.35, 0.65, m))
    radius = col(rng.uniform(0.22, 0.34, m))
    rot = col(rng.uniform(-0.35, 0.35, m))  # small rotation: keeps shapes distinct
    dx, dy = gx[None] - cx, gy[None] - cy
    u = (dx * np.cos(rot) + dy * np.sin(rot)) / radius  # object coordinates, radius = 1
    v = (-dx * np.sin(rot) + dy * np.cos(rot)) / radius
    d = np.sqrt(u * u + v * v)

    shape = attrs["shape"][y]
    masks = {
        0: d < 1.0,
        1: np.maximum(np.abs(u), np.abs(v)) < 0.8,
        2: (v < 0.5) & (v > 1.7 * np.abs(u) - 1.0),
        3: (d < 1.0) & (d > 0.55),
        4: ((np.abs(u) < 0.3) & (np.abs(v) < 1.0)) | ((np.abs(v) < 0.3) & (np.abs(u) < 1.0)),
    }
    mask = np.zeros((m, size, size), dtype=bool)
    for k, km in masks.items():
        sel = shape == k
        mask[sel] = km[sel]

    angle = col(attrs["angle"][y] + rng.normal(0, 0.05, m))
    freq = col(attrs["freq"][y])
    phase = col(rng.uniform(0, 2 * np.pi, m))
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (u * np.cos(angle) + v * np.sin(angle)) + phase)

    hue = (attrs["hue"][y] + rng.normal(0, 0.03, m)) % 1.0
    sat, val = rng.uniform(0.55, 0.95, m), rng.uniform(0.7, 1.0, m)
    fg = _hsv_to_rgb(hue, sat, val).astype(np.float32)  # (m, 3)
    bg_level = rng.uniform(0.05, 0.45, m).astype(np.float32)

    obj = (0.35 + 0.65 * stripes)[..., None] * fg[:, None, None, :]       # (m, s, s, 3)
    bg = bg_level[:, None, None, None] + 0.08 * rng.standard_normal((m, size, size, 1)).astype(np.float32)
    img = np.where(mask[..., None], obj, bg)
    img += 0.03 * rng.standard_normal(img.shape).astype(np.float32)
    if channels == 1:
        img = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all in [0, 1]; returns (m, 3)."""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([
        np.stack([v, t, p], -1), np.stack([q, v, p], -1), np.stack([p, v, t], -1),
        np.stack([p, q, v], -1), np.stack([t, p, v], -1), np.stack([v, p, q], -1),
    ], 0)  # (6, m, 3)
    return table[i, np.arange(len(h))]
