"""The training run's curves as a PNG, from the rows of ``metrics.jsonl``."""

from __future__ import annotations

import io
from pathlib import Path

from dali_cutmix.files import atomic_write


def plot_metrics(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train (mixed)")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="cross entropy", title="loss")
    ax_acc.plot(epochs, [r["val_top1"] for r in rows], "o-", label="top-1")
    ax_acc.plot(epochs, [r["val_top5"] for r in rows], "o-", label="top-5")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="validation")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(png.getbuffer()))
