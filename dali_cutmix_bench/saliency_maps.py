"""Which saliency map SaliencyMix's boxes follow: the library's grid centre-surround map against the
authors' choice and the usual cheaper ones, on photos.

    python -m dali_cutmix_bench.saliency_maps [--photos 'DIR/*.jpg' ...] [--output runs/saliency-maps]

Each photo is centre-cropped to a square and resized to 224 x 224. Maps:

* ``grid centre-surround``: the library's (:mod:`dali_cutmix.saliency`), integer arithmetic on a
  32-cell grid;
* ``grid frequency-tuned``: each cell's distance from the image's mean cell (Achanta et al., CVPR
  2009, on the same grid), the first version of the library's map;
* ``spectral residual (NumPy)``: Hou and Zhang (CVPR 2007) at full resolution, the prototype of
  ``dali_cutmix_bench.label_noise``;
* with OpenCV's contrib module (``opencv-contrib-python-headless``, not a dependency: install it
  beside the project to compare): ``fine-grained (OpenCV)``, the map the authors' code uses
  (``StaticSaliencyFineGrained``, Montabone and Soto 2010), and OpenCV's spectral residual.

For each map: milliseconds an image (one image at a time, one core) and where its peak falls in
the authors' map (blurred by 31 x 31 pixels, so that a peak on the object and not on its exact
pixel counts): the share of that map's pixels below the value at the peak (1.0: the authors'
top). Writes ``saliency_maps.json`` and ``peaks.png`` (each photo with each map's peak) to
``--output``.
"""

from __future__ import annotations

import argparse
import glob
import json
import time
from pathlib import Path

import numpy as np

from dali_cutmix.saliency import cell_size, cell_sums, peaks
from dali_cutmix_bench.label_noise import spectral_residual

PHOTOS = ("/usr/share/backgrounds/mate/nature/*.jpg", "/usr/share/backgrounds/mate/abstract/Elephants.jpg")
SIDE = 224
COLOURS = {"grid centre-surround": (255, 0, 255), "grid frequency-tuned": (0, 160, 255),
           "spectral residual (NumPy)": (255, 200, 0), "fine-grained (OpenCV)": (0, 255, 0),
           "spectral residual (OpenCV)": (255, 60, 0)}  # fmt: skip


def load(path: str) -> np.ndarray:
    """(SIDE, SIDE, 3) uint8: the photo's centre square, resized."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        s = min(im.size)
        left, top = (im.width - s) // 2, (im.height - s) // 2
        return np.asarray(im.crop((left, top, left + s, top + s)).resize((SIDE, SIDE), Image.BILINEAR))


def grid_frequency_tuned(image: np.ndarray) -> tuple[int, int]:
    """The peak of each grid cell's distance from the mean cell (the grid and blur of the library's map)."""
    f = cell_size(SIDE, SIDE)
    rows = SIDE // f
    cells = cell_sums(image[None], "HWC")[0].astype(np.float64)
    padded = np.pad(cells, 1, mode="edge")
    blurred = sum(w * padded[dy : dy + rows, dx : dx + rows] for dy, wy in enumerate((1, 2, 1))
                  for dx, w in enumerate((wy, 2 * wy, wy))) / 16  # fmt: skip
    r, c = np.unravel_index(np.argmax(np.abs(blurred - blurred.mean())), blurred.shape)
    return int(r) * f + f // 2, int(c) * f + f // 2


def _argmax(saliency: np.ndarray) -> tuple[int, int]:
    return tuple(int(v) for v in np.unravel_index(np.argmax(saliency), saliency.shape))


def methods() -> dict:
    """name -> (image (SIDE, SIDE, 3) uint8 -> peak (y, x)); OpenCV's two when its contrib module imports."""
    found = {
        "grid centre-surround": lambda im: tuple(int(v) for v in peaks(im[None], "HWC")[0]),
        "grid frequency-tuned": grid_frequency_tuned,
        "spectral residual (NumPy)": lambda im: _argmax(spectral_residual(im.astype(np.float64).sum(axis=2))),
    }
    try:
        import cv2

        fine, spectral = (
            cv2.saliency.StaticSaliencyFineGrained_create(),
            cv2.saliency.StaticSaliencySpectralResidual_create(),
        )
    except (ImportError, AttributeError):
        return found

    def opencv(algorithm):
        return lambda im: _argmax(algorithm.computeSaliency(np.ascontiguousarray(im[..., ::-1]))[1])

    return found | {"fine-grained (OpenCV)": opencv(fine), "spectral residual (OpenCV)": opencv(spectral)}


def authors_maps(photos: np.ndarray) -> list[np.ndarray] | None:
    """OpenCV's fine-grained map of each photo, blurred by 31 x 31; None without OpenCV's contrib module."""
    try:
        import cv2

        fine = cv2.saliency.StaticSaliencyFineGrained_create()
    except (ImportError, AttributeError):
        return None
    return [cv2.blur(fine.computeSaliency(np.ascontiguousarray(p[..., ::-1]))[1].astype(np.float64), (31, 31))
            for p in photos]  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", nargs="+", default=list(PHOTOS), help="paths or globs of photos")
    p.add_argument("--output", default="runs/saliency-maps")
    args = p.parse_args(argv)
    paths = sorted({path for pattern in args.photos for path in glob.glob(pattern)})
    if not paths:
        p.error(f"--photos {' '.join(args.photos)}: no photo there (Debian's mate-backgrounds has some)")
    photos = np.stack([load(path) for path in paths])
    reference = authors_maps(photos)
    report = {"photos": [Path(path).name for path in paths], "side": SIDE, "methods": {}}
    found = {}
    for name, peak in methods().items():
        peak(photos[0])  # warm
        start = time.perf_counter()
        found[name] = [peak(photo) for photo in photos]
        row = {"ms_per_image": round(1000 * (time.perf_counter() - start) / len(photos), 2), "peaks": found[name]}
        if reference is not None:
            ranks = [float((m < m[y, x]).mean()) for m, (y, x) in zip(reference, found[name])]
            row |= {
                "authors_map_rank_median": round(float(np.median(ranks)), 3),
                "authors_map_rank_min": round(min(ranks), 3),
            }
        report["methods"][name] = row
        agreement = (f"  authors' map at the peak: median {row['authors_map_rank_median']:.3f}, lowest "
                     f"{row['authors_map_rank_min']:.3f}") if reference is not None else ""  # fmt: skip
        print(f"{name:<28} {row['ms_per_image']:6.2f} ms an image{agreement}")
    if reference is None:
        print("no OpenCV contrib module: the authors' map is not compared (pip install opencv-contrib-python-headless)")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "saliency_maps.json").write_text(json.dumps(report, indent=2))
    _draw(photos, found, out / "peaks.png")
    print(f"wrote {out / 'saliency_maps.json'} and {out / 'peaks.png'}")
    return 0


def _draw(photos: np.ndarray, found: dict, path: Path) -> None:
    """The photos in a row of columns, each map's peak a coloured ring, and a key."""
    from PIL import Image, ImageDraw

    cols = min(len(photos), 5)
    rows = -(-len(photos) // cols)
    key = 14 * len(found) + 8
    canvas = Image.new("RGB", (cols * (SIDE + 4), rows * (SIDE + 4) + key), "white")
    draw = ImageDraw.Draw(canvas)
    for i, photo in enumerate(photos):
        x0, y0 = (i % cols) * (SIDE + 4), (i // cols) * (SIDE + 4)
        canvas.paste(Image.fromarray(photo), (x0, y0))
        for name, points in found.items():
            y, x = points[i]
            draw.ellipse((x0 + x - 7, y0 + y - 7, x0 + x + 7, y0 + y + 7), outline=COLOURS[name], width=3)
    for k, name in enumerate(found):
        y = rows * (SIDE + 4) + 4 + 14 * k
        draw.ellipse((4, y, 14, y + 10), outline=COLOURS[name], width=3)
        draw.text((20, y - 1), name, fill="black")
    canvas.save(path)


if __name__ == "__main__":
    raise SystemExit(main())
