"""An ImageNet-like benchmark folder made from real photos (not noise).

Each image is a random crop of one of the photos (area 10%-60%, aspect 3/4-4/3) resized so its
shorter side is about 375 px, like an average ImageNet JPEG, and saved at quality 90. Images
are spread round-robin over ``classes`` folders; ``val`` gets a tenth as many.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

PHOTO_DIRS = (Path("/usr/share/backgrounds/mate/nature"), Path("/usr/share/backgrounds/mate/desktop"))
PHOTO_EXTENSIONS = (".jpg", ".jpeg")


def find_photos(dirs=PHOTO_DIRS) -> list[Path]:
    photos = sorted(p for d in dirs if d.is_dir() for p in d.iterdir() if p.suffix.lower() in PHOTO_EXTENSIONS)
    if not photos:
        raise FileNotFoundError(
            f"no photos in {', '.join(map(str, dirs))}: install them with "
            f"'sudo apt-get install mate-backgrounds', or pass --photos DIR"
        )
    return photos


def build(
    out: str | Path,
    *,
    images: int = 1000,
    classes: int = 10,
    short_side: int = 375,
    quality: int = 90,
    photos: list[Path] | str | None = None,
    seed: int = 0,
) -> Path:
    """Write ``out/train/<class>/*.JPEG`` (``images``) and ``out/val`` (a tenth); cached by marker.
    ``photos``: the source photos (default: the installed ones), or ``"synthetic"``."""
    from PIL import Image

    out = Path(out)
    stamp = f"benchdata {images} {classes} {short_side} {quality} {seed}{' synthetic' * (photos == 'synthetic')}\n"
    marker = out / ".complete"
    if marker.is_file() and marker.read_text() == stamp:
        return out
    if images < classes or classes < 1:
        raise ValueError(f"need images >= classes >= 1, got images={images}, classes={classes}")
    rng = np.random.default_rng(seed)
    if photos == "synthetic":
        sources = synthetic_photos(rng)
    else:
        sources = [Image.open(p).convert("RGB") for p in (photos or find_photos())]
    for split, count in (("train", images), ("val", max(classes, images // 10))):
        for i in range(count):
            photo = sources[i % len(sources)]
            W, H = photo.size
            area = rng.uniform(0.1, 0.6) * W * H
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            w, h = min(W, int(np.sqrt(area * aspect))), min(H, int(np.sqrt(area / aspect)))
            x, y = rng.integers(0, W - w + 1), rng.integers(0, H - h + 1)
            crop = photo.crop((x, y, x + w, y + h))
            scale = short_side / min(w, h)
            crop = crop.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
            folder = out / split / f"c{i % classes:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            crop.save(folder / f"{split}_{i:07d}.JPEG", quality=quality)
    marker.write_text(stamp)
    return out


def synthetic_photos(rng: np.random.Generator, count: int = 8, size=(1024, 768)) -> list:
    """Stand-ins where no photos are installed: smooth colour fields with fine noise, so that
    JPEG files and decoding cost about what photos' do."""
    from PIL import Image

    W, H = size
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    out = []
    for _ in range(count):
        f = rng.uniform(2, 12, (3, 2)) * np.pi / np.array([W, H])
        field = np.stack([np.sin(x * fx + y * fy + rng.uniform(0, 6)) for fx, fy in f], axis=-1)
        noise = rng.normal(0, 12, (H, W, 3))
        out.append(Image.fromarray(np.clip(128 + 100 * field + noise, 0, 255).astype(np.uint8)))
    return out


def synthetic_classes(out: str | Path, *, classes: int = 4, per_class: int = 100, size: int = 48, seed: int = 0):
    """A small learnable ImageNet-layout tree (``train`` and a fifth as much ``val``): class ``k``
    is a gradient in colour channel ``k % 3``, running across for ``k // 3`` even and down for
    odd, under noise. For a short training check where the demo data is not installed."""
    from PIL import Image

    out, rng = Path(out), np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    for split, n in (("train", per_class), ("val", max(1, per_class // 5))):
        for k in range(classes):
            folder = out / split / f"class{k}"
            folder.mkdir(parents=True, exist_ok=True)
            grad = ramp[None, :] if (k // 3) % 2 == 0 else ramp[:, None]
            for i in range(n):
                image = rng.normal(60, 30, (size, size, 3))
                image[..., k % 3] += grad * 0.7
                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.JPEG", quality=90)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder to create (ImageNet layout)")
    p.add_argument("--images", type=int, default=1000, help="training images")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--short-side", type=int, default=375)
    p.add_argument(
        "--photos", type=str, default=None, help="folder of source JPEG photos, or 'synthetic' (no photos needed)"
    )
    args = p.parse_args(argv)
    photos = args.photos if args.photos in (None, "synthetic") else find_photos([Path(args.photos)])
    try:
        root = build(args.out, images=args.images, classes=args.classes, short_side=args.short_side, photos=photos)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    print(f"wrote {root}")


if __name__ == "__main__":
    main()
