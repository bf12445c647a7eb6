"""The CutMix backends, one module each behind one signature (``build``); ``dali_cutmix.ops``
chooses. Their names are here, light, for command lines that offer them without loading DALI."""

NAMES = ("native", "python", "ops")
# What each backend's boxes can receive (MixConfig.paste): ResizeMix ("resize") is the python
# backend's only; the others paste the partner's pixels in place.
PASTES = {"native": ("cut",), "python": ("cut", "resize"), "ops": ("cut",)}


def paste_refused(backend: str, paste: str) -> str | None:
    """Why ``backend`` does not take ``paste``, in one line; None when it does."""
    if paste in PASTES.get(backend, (paste,)):
        return None
    runs = [name for name in NAMES if paste in PASTES[name]]
    return (f"backend '{backend}' pastes in place only (paste 'cut'); ResizeMix (paste '{paste}') runs on backend "
            f"{' or '.join(repr(n) for n in runs)}")  # fmt: skip
