"""The CutMix backends, one module each behind one signature (``build``); ``dali_cutmix.ops``
chooses. Their names are here, light, for command lines that offer them without loading DALI."""

NAMES = ("native", "python", "ops")
