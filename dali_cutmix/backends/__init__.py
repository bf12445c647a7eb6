"""The CutMix backends, one module each behind one signature (``build``); ``dali_cutmix.ops``
chooses. Their names are here, light, for command lines that offer them without loading DALI."""

NAMES = ("native", "python", "ops")
# The recipes beyond CutMix's in-place paste at a random centre, and the backends that run them:
# the python backend's boxes can receive the partner's whole image (ResizeMix, paste "resize") and
# follow the pixels (SaliencyMix, centre "saliency"), and so can the native operator's, which draws,
# places and fills its boxes itself; the ops backend has no operator that resamples into a box or
# reads a saliency map.
RECIPES = {"resize": "ResizeMix (paste 'resize')", "saliency": "SaliencyMix (centre 'saliency')"}
RUNS = {"resize": ("native", "python"), "saliency": ("native", "python")}


def recipe_refused(backend: str, choice: str) -> str | None:
    """Why ``backend`` does not run ``choice`` (a paste or a centre of the recipe), in one line;
    None when it does."""
    if choice not in RUNS or backend in RUNS[choice] or backend not in NAMES:
        return None
    runs = " or ".join(repr(n) for n in RUNS[choice])
    return f"backend '{backend}' does not run {RECIPES[choice]}; it runs on backend {runs}"
