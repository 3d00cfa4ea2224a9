"""Procedurally drawn stained cells with a learnable class signal, for fixtures and demos.

A cell is a cytoplasm ellipse holding a nucleus ellipse on a light slide background. The class
index sets the nucleus size (4 steps), the cytoplasm stain (4 colours) and the nucleus shape
(round or elongated), so up to 32 classes look different; position, rotation, size jitter and
pixel noise vary per image so that a model has to learn the signal rather than memorise pixels.
"""

from __future__ import annotations

import numpy as np

_NUCLEUS_FRACTION = (0.08, 0.13, 0.18, 0.24)
_CYTOPLASM_RGB = ((236, 150, 170), (140, 190, 230), (170, 215, 150), (230, 200, 120))
_NUCLEUS_RGB = ((70, 40, 120), (40, 50, 110), (110, 30, 70))
_BACKGROUND_RGB = np.array([246.0, 238.0, 240.0])


def class_style(class_index: int) -> dict:
    """The fixed look of a class: nucleus size fraction, colours, elongation."""
    return {
        "nucleus": _NUCLEUS_FRACTION[class_index % 4],
        "cytoplasm_rgb": np.array(_CYTOPLASM_RGB[(class_index // 4) % 4], dtype=float),
        "nucleus_rgb": np.array(_NUCLEUS_RGB[class_index % 3], dtype=float),
        "elongation": 1.0 if (class_index // 16) % 2 == 0 else 1.8,
    }


def _ellipse_mask(xx, yy, cx, cy, a, b, theta) -> np.ndarray:
    """Soft (anti-aliased) mask of a rotated ellipse with semi-axes a, b in pixels."""
    cos, sin = np.cos(theta), np.sin(theta)
    u = (xx - cx) * cos + (yy - cy) * sin
    v = -(xx - cx) * sin + (yy - cy) * cos
    radius = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    edge = 1.5 / max(min(a, b), 1.0)
    return np.clip((1.0 - radius) / edge + 0.5, 0.0, 1.0)


def draw_cell(rng: np.random.Generator, class_index: int, height: int, width: int) -> np.ndarray:
    """One ``height x width x 3`` uint8 image of a cell of class ``class_index``."""
    style = class_style(class_index)
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    side = min(height, width)
    cx = width / 2 + rng.uniform(-0.08, 0.08) * width
    cy = height / 2 + rng.uniform(-0.08, 0.08) * height
    cyto_a = side * rng.uniform(0.36, 0.44)
    cyto_b = cyto_a * rng.uniform(0.75, 0.95)
    theta = rng.uniform(0, np.pi)
    nuc_r = style["nucleus"] * side * rng.uniform(0.9, 1.1)
    nuc_a, nuc_b = nuc_r * np.sqrt(style["elongation"]), nuc_r / np.sqrt(style["elongation"])
    ncx = cx + rng.uniform(-0.1, 0.1) * cyto_a
    ncy = cy + rng.uniform(-0.1, 0.1) * cyto_b
    cyto = _ellipse_mask(xx, yy, cx, cy, cyto_a, cyto_b, theta)[..., None]
    nucleus = _ellipse_mask(xx, yy, ncx, ncy, nuc_a, nuc_b, theta + rng.uniform(-0.3, 0.3))
    nucleus = nucleus[..., None]
    shade = 1.0 + 0.05 * (xx / max(width, 1) - 0.5)[..., None]
    img = _BACKGROUND_RGB * shade
    img = img * (1 - cyto) + style["cytoplasm_rgb"] * cyto
    img = img * (1 - nucleus) + style["nucleus_rgb"] * nucleus
    img = img + rng.normal(0.0, 8.0, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def draw_cluster(rng: np.random.Generator, class_index: int, height: int,
                 width: int) -> np.ndarray:
    """A field of view with a few cells of one class (stands in for a cluster image)."""
    img = np.empty((height, width, 3), dtype=np.uint8)
    half = max(width // 2, 1)
    img[:, :half] = draw_cell(rng, class_index, height, half)
    img[:, half:] = draw_cell(rng, class_index, height, width - half)
    return img
