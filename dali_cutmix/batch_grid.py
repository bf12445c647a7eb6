"""A picture of the batch a pipeline feeds (:func:`show_batch`): the quickest check that a recipe
does what was asked, on the user's own data."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from .files import atomic_write

BOX_COLOUR = (255, 0, 255)  # the pasted box's outline: magenta, rare in photos and in the demo's greys


def tile_scale(height: int, width: int, at_least: int = 128) -> int:
    """The whole-number upscaling that makes an image at least ``at_least`` pixels on its longer side."""
    return max(1, math.ceil(at_least / max(height, width)))


def show_batch(images, labels_a, labels_b, lam, classes, path, *, boxes=None, blend=None, mirror=None,
               mean=None, std=None, max_images: int = 16, columns: int = 4) -> Path:  # fmt: skip
    """Write a grid of up to ``max_images`` images of a mixed batch to ``path`` (PNG): each captioned
    with its two class names and lam, the pasted box outlined in :data:`BOX_COLOUR`.

    images: (B, H, W, C) uint8, or (B, C, H, W) float normalised with ``mean`` and ``std`` (undone
        here: the images as the model sees them, before normalisation); NumPy or torch, any device.
    labels_a, labels_b: (B,) or (B, 1) class indices; lam: (B,) float, as the loader gives them.
    classes: the class names the labels index.
    path: the PNG to write.
    boxes: None, or (B, 4) ``y1, x1, y2, x2`` each sample received (before a flip).
    blend: None, or (B,), nonzero for MixUp samples (no box drawn).
    mirror: None, or (B,), nonzero where the sample was flipped after mixing (its box drawn flipped).
    mean, std: None (uint8 images), or one value a channel in pixel levels.
    max_images, columns: the grid's size.
    Returns the path. Tiles are upscaled by :func:`tile_scale` (nearest neighbour), so box
    ``(y1, x1, y2, x2)`` of tile ``i`` has its corners at ``scale * (x1, y1)`` and
    ``scale * (x2, y2) - 1`` inside the tile (see :func:`tile_origin`).
    """
    from PIL import Image, ImageDraw, ImageFont

    def array(x):
        return None if x is None else np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)

    images, boxes, blend, mirror = array(images), array(boxes), array(blend), array(mirror)
    la, lb, lam = array(labels_a).reshape(-1), array(labels_b).reshape(-1), array(lam).reshape(-1)
    if images.dtype != np.uint8:
        if mean is None or std is None:
            raise ValueError("show_batch: float images need the mean and std they were normalised with")
        images = (
            images.astype(np.float32) * np.asarray(std, np.float32)[:, None, None]
            + np.asarray(mean, np.float32)[:, None, None]
        )
        images = np.clip(np.floor(images + 0.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    n = min(len(images), max_images)
    H, W = images.shape[1:3]
    scale = tile_scale(H, W)
    font = ImageFont.load_default()
    canvas = Image.new("RGB", grid_size(n, H, W, columns), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        x0, y0 = tile_origin(i, H, W, columns)
        tile = Image.fromarray(images[i].squeeze(-1) if images.shape[-1] == 1 else images[i])
        canvas.paste(tile.convert("RGB").resize((W * scale, H * scale), Image.NEAREST), (x0, y0))
        mixup = blend is not None and blend[i]
        if boxes is not None and not mixup:
            y1, x1, y2, x2 = (int(v) for v in boxes[i])
            if mirror is not None and mirror[i]:
                x1, x2 = W - x2, W - x1
            if y2 > y1 and x2 > x1:
                corners = [x0 + x1 * scale, y0 + y1 * scale, x0 + x2 * scale - 1, y0 + y2 * scale - 1]
                draw.rectangle(corners, outline=BOX_COLOUR, width=max(1, scale // 2))
        names = [classes[int(k)] if 0 <= int(k) < len(classes) else str(int(k)) for k in (la[i], lb[i])]
        names = [" ".join(n.split()) for n in names]  # a caption is one line: a class name may hold a newline
        caption = [f"{names[0]} / {names[1]}", f"lam {float(lam[i]):.2f}" + (" (MixUp)" if mixup else "")]
        for line, text in enumerate(caption):
            while len(text) > 3 and draw.textlength(text, font=font) > W * scale:
                text = text[:-2] + "…"
            draw.text((x0, y0 + H * scale + 2 + 12 * line), text, fill=(0, 0, 0), font=font)
    png = io.BytesIO()
    canvas.save(png, format="PNG")
    atomic_write(Path(path), lambda f: f.write(png.getbuffer()))
    return Path(path)


CAPTION = 28  # pixels of caption under each tile
GAP = 6


def grid_size(n: int, height: int, width: int, columns: int = 4) -> tuple[int, int]:
    """(width, height) in pixels of the grid of ``n`` images of ``height`` x ``width``."""
    scale = tile_scale(height, width)
    cols, rows = min(n, columns), math.ceil(n / columns)
    return cols * (width * scale + GAP) + GAP, rows * (height * scale + CAPTION + GAP) + GAP


def tile_origin(i: int, height: int, width: int, columns: int = 4) -> tuple[int, int]:
    """The (x, y) pixel where image ``i``'s tile starts."""
    scale = tile_scale(height, width)
    return GAP + (i % columns) * (width * scale + GAP), GAP + (i // columns) * (height * scale + CAPTION + GAP)
