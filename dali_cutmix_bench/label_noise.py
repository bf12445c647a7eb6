"""CutMix's label noise, measured: how much of each mixed label is the partner's, against how much
of the visible object is.

    python -m dali_cutmix_bench.label_noise [--images 10000] [--output runs/label-noise]

On Fashion-MNIST (Debian's ``dataset-fashion-mnist``, read from its IDX files, not the JPEG
export) every object is exactly its non-black pixels. Each mixed sample's label gives the partner
``1 - lam``; of the object pixels the sample shows, a share comes from the partner (a pixel of a
blended image counts with its blend weight). The two shares should agree; the report gives their
distribution and how often the label gives an image at least 30% while at most 5% of what shows
of the objects is that image's (for the partner, then for the receiving image), per recipe:

* ``cutmix``: the paper's (Beta(1, 1), a box of ``sqrt(1 - lam)`` sides, uniform centre), per sample;
* ``mixup``: MixUp with Beta(1, 1), per sample, for contrast;
* ``resizemix``: ResizeMix (Qin et al., 2020) as the library runs it (``MixConfig(paste="resize")``):
  the whole partner resampled into a box of scale ``tau ~ U(0.1, 0.8)`` (the paper's range),
  uniformly placed; ``lam`` the exact pasted share;
* ``saliencymix``: SaliencyMix (Uddin et al., ICLR 2021) as the library runs it
  (``MixConfig(centre="saliency")``): a CutMix box centred on the peak of the partner's
  grid frequency-tuned saliency (:mod:`dali_cutmix.saliency`), pasted from the partner's same
  place; ``lam`` the exact pasted share;
* ``saliencymix-sr``: the same box centred on the peak of the spectral residual (Hou and Zhang,
  CVPR 2007) instead, a NumPy prototype: what the costlier map would buy.
* ``cutmix-content``, ``saliencymix-content``: their boxes, the label weighted by content instead
  of area (the option the issue allows if it tracks the object better): each image's share of the
  saliency mass that shows (:func:`dali_cutmix.saliency.saliency_map`, the receiver's outside the
  box, the partner's inside it).

Writes ``label_noise.json`` and ``worst.png`` (the CutMix samples whose label disagrees most with
what they show, drawn as the batch picture is) to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dali_cutmix.paste import apply_cutmix, placed
from dali_cutmix.recipe import MixConfig
from dali_cutmix.saliency import saliency_map
from dali_cutmix.sampling import sample_mix

RESIZEMIX_SCALE = (0.1, 0.8)  # the paper's tau range
RECIPES = ("cutmix", "mixup", "resizemix", "saliencymix", "saliencymix-sr", "cutmix-content", "saliencymix-content")
FLAW_LABEL, FLAW_VISIBLE = 0.30, 0.05  # a label share of at least 30% for at most 5% of what shows


def load_fashion_mnist(count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` training images (N, 28, 28) uint8 and their labels, from Debian's IDX files."""
    from pipelines.folders import FASHION_MNIST_DIR, read_idx

    images = read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz")[:count]
    labels = read_idx(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz")[:count]
    return images, labels


def spectral_residual(image: np.ndarray) -> np.ndarray:
    """The spectral-residual saliency map of a grey image (Hou and Zhang, CVPR 2007): the log
    amplitude spectrum less its 3x3 local mean, back with the phase, squared, smoothed."""
    f = np.fft.fft2(image.astype(np.float64))
    log_amp = np.log(np.abs(f) + 1e-9)
    phase = np.angle(f)
    padded = np.pad(log_amp, 1, mode="edge")
    h, w = log_amp.shape
    mean = sum(padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9
    saliency = np.abs(np.fft.ifft2(np.exp(log_amp - mean + 1j * phase))) ** 2
    return _blur(saliency, 2)


def _blur(x: np.ndarray, radius: int) -> np.ndarray:
    """A box blur of ``radius`` applied twice (close to a Gaussian), edges repeated."""
    for _ in range(2):
        padded = np.pad(x, radius, mode="edge")
        k = 2 * radius + 1
        x = sum(padded[dy : dy + x.shape[0], dx : dx + x.shape[1]] for dy in range(k) for dx in range(k)) / k**2
    return x


def peak(saliency: np.ndarray) -> tuple[int, int]:
    return tuple(int(v) for v in np.unravel_index(np.argmax(saliency), saliency.shape))


def cut_sides(lam0: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """CutMix's half-sides for ``lam0``: ``floor(sqrt(1 - lam0) * H / 2)`` and the same for W."""
    cut = np.sqrt(1.0 - lam0)
    return np.floor(h * cut / 2).astype(int), np.floor(w * cut / 2).astype(int)


def mixed_shares(images: np.ndarray, recipe: str, rng) -> dict[str, np.ndarray]:
    """For each sample of one batch mixed by ``recipe``: the label's share for the partner
    (``1 - lam``), the partner's share of the object pixels that show, and the receiving image's
    share of both; the mixed images (for the picture) and each sample's partner and box."""
    b, h, w = images.shape
    masks = images > 0
    perm = rng.permutation(b)
    mixed = images.copy()
    partner_px = np.zeros(b)
    own_px = np.zeros(b)
    lam = np.ones(b)
    boxes = np.zeros((b, 4), int)
    if recipe.startswith(("cutmix", "saliencymix")):
        if recipe != "saliencymix-sr":  # the library's own
            centre = "saliency" if recipe.startswith("saliencymix") else "random"
            params = sample_mix(b, h, w, MixConfig(alpha=1.0, mode="elem", centre=centre), rng)
            params = placed(images[..., None], params, "HWC")
            perm, boxes, lam = params.perm, params.boxes.astype(int), params.lam.astype(np.float64)
            if recipe.endswith("-content"):
                lam = content_weight(images, perm, boxes, lam)
        else:
            lam0 = rng.beta(1.0, 1.0, b)
            hh, hw = cut_sides(lam0, h, w)
            for i in range(b):
                cy, cx = peak(spectral_residual(images[perm[i]]))
                y1, y2 = np.clip([cy - hh[i], cy + hh[i]], 0, h)
                x1, x2 = np.clip([cx - hw[i], cx + hw[i]], 0, w)
                boxes[i] = (y1, x1, y2, x2)
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            lam = 1.0 - area / (h * w)
        for i in range(b):
            y1, x1, y2, x2 = boxes[i]
            j = perm[i]
            mixed[i, y1:y2, x1:x2] = images[j, y1:y2, x1:x2]
            partner_px[i] = masks[j, y1:y2, x1:x2].sum()
            own_px[i] = masks[i].sum() - masks[i, y1:y2, x1:x2].sum()
    elif recipe == "resizemix":  # the library's own (MixConfig(paste="resize"))
        params = sample_mix(b, h, w, MixConfig(paste="resize", resize_scale=RESIZEMIX_SCALE, mode="elem"), rng)
        perm, boxes, lam = params.perm, params.boxes.astype(int), params.lam.astype(np.float64)
        mixed = apply_cutmix(images[..., None], np.arange(b), params, "HWC")[0][..., 0]
        for i in range(b):
            y1, x1, y2, x2 = boxes[i]
            partner_px[i] = (mixed[i, y1:y2, x1:x2] > 0).sum()
            own_px[i] = masks[i].sum() - masks[i, y1:y2, x1:x2].sum()
    elif recipe == "mixup":
        lam = rng.beta(1.0, 1.0, b)
        weights = lam[:, None, None]
        mixed = np.floor(images * weights + images[perm] * (1 - weights) + 0.5).astype(np.uint8)
        partner_px = (1 - lam) * masks[perm].sum(axis=(1, 2))
        own_px = lam * masks.sum(axis=(1, 2))
    else:
        raise ValueError(f"unknown recipe {recipe!r}")
    shown = partner_px + own_px
    visible = np.divide(partner_px, shown, out=np.full(b, 0.5), where=shown > 0)
    return {"label": 1.0 - lam, "visible": visible, "lam": lam, "perm": perm, "boxes": boxes, "mixed": mixed}


def content_weight(images: np.ndarray, perm: np.ndarray, boxes: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """The receiving image's share of the saliency mass that shows (its own outside the box, the
    partner's inside), where a box is pasted; ``lam`` elsewhere. 28 x 28 images: one cell a pixel."""
    mass = saliency_map(images[..., None], "HWC").astype(np.float64)
    out = lam.copy()
    for i, (y1, x1, y2, x2) in enumerate(boxes):
        pasted = mass[perm[i], y1:y2, x1:x2].sum()
        kept = mass[i].sum() - mass[i, y1:y2, x1:x2].sum()
        if y2 > y1 and x2 > x1 and pasted + kept > 0:
            out[i] = kept / (pasted + kept)
    return out


def summarise(label: np.ndarray, visible: np.ndarray) -> dict:
    """The distribution of the gap and the flaw's rates, for the partner and the receiving image."""
    gap = label - visible  # > 0: the label gives the partner more than shows of it
    return {
        "samples": int(len(label)),
        "gap_quantiles": {q: round(float(np.quantile(gap, q / 100)), 3) for q in (5, 25, 50, 75, 95)},
        "mean_abs_gap": round(float(np.abs(gap).mean()), 4),
        "correlation": round(float(np.corrcoef(label, visible)[0, 1]), 4),
        "partner_flaw": round(float(((label >= FLAW_LABEL) & (visible <= FLAW_VISIBLE)).mean()), 4),
        "receiver_flaw": round(float(((1 - label >= FLAW_LABEL) & (1 - visible <= FLAW_VISIBLE)).mean()), 4),
        # the same at a looser bar: at least 30% of the label for at most 15% of what shows
        "partner_flaw_15": round(float(((label >= FLAW_LABEL) & (visible <= 0.15)).mean()), 4),
        "receiver_flaw_15": round(float(((1 - label >= FLAW_LABEL) & (1 - visible <= 0.15)).mean()), 4),
    }


def saliency_timing(rng) -> dict:
    """Spectral residual against the library's map on photo-sized images: milliseconds an image
    (NumPy, one core, one image at a time; dali_cutmix_bench.saliency_maps compares more maps on photos)."""
    photos = rng.integers(0, 256, (16, 224, 224, 3), dtype=np.uint8)
    maps = {"spectral_residual": lambda p: spectral_residual(p.astype(np.float64).sum(axis=2)),
            "library_grid_centre_surround": lambda p: saliency_map(p[None], "HWC")}  # fmt: skip
    out = {}
    for name, fn in maps.items():
        start = time.perf_counter()
        for p in photos:
            fn(p)
        out[name] = round(1000 * (time.perf_counter() - start) / len(photos), 2)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=10000, help="Fashion-MNIST training images to mix (batches of 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="runs/label-noise")
    args = p.parse_args(argv)
    if args.images < 256:
        p.error(f"--images must be >= 256 (one batch), got {args.images}")
    images, labels = load_fashion_mnist(args.images)
    rng = np.random.default_rng(args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    report, worst = {}, None
    for recipe in RECIPES:
        label, visible = [], []
        for start in range(0, len(images) - 255, 256):
            batch = mixed_shares(images[start : start + 256], recipe, rng)
            label.append(batch["label"])
            visible.append(batch["visible"])
            if recipe == "cutmix" and worst is None:
                worst = (start, batch)
        report[recipe] = summarise(np.concatenate(label), np.concatenate(visible))
        r = report[recipe]
        flaws = (f"flaw partner {100 * r['partner_flaw']:4.1f}% / {100 * r['partner_flaw_15']:4.1f}%, receiver "
                 f"{100 * r['receiver_flaw']:4.1f}% / {100 * r['receiver_flaw_15']:4.1f}%")  # fmt: skip
        print(f"{recipe:<19} {flaws}  mean |gap| {r['mean_abs_gap']:.3f}  corr {r['correlation']:.3f}  "
              f"gap quantiles {r['gap_quantiles']}")  # fmt: skip
    report["saliency_ms_per_224px_image"] = saliency_timing(rng)
    print("saliency, ms a 224x224 image (NumPy):", report["saliency_ms_per_224px_image"])
    (out / "label_noise.json").write_text(json.dumps(report, indent=2))
    _draw_worst(worst, labels, out / "worst.png")
    print(f"wrote {out / 'label_noise.json'} and {out / 'worst.png'}")
    return 0


def _draw_worst(worst, labels: np.ndarray, path: Path) -> None:
    """The 16 CutMix samples of the first batch whose label disagrees most with what they show."""
    from dali_cutmix.batch_grid import show_batch
    from pipelines.folders import FASHION_MNIST_CLASSES

    start, batch = worst
    order = np.argsort(-np.abs(batch["label"] - batch["visible"]))[:16]
    rgb = np.repeat(batch["mixed"][order][..., None], 3, axis=3)
    own = labels[start : start + 256]
    show_batch(rgb, own[order], own[batch["perm"]][order], batch["lam"][order].astype(np.float32),
               list(FASHION_MNIST_CLASSES), path, boxes=batch["boxes"][order])  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
