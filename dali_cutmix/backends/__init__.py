"""The CutMix backends, one module each behind one signature (``build``); ``dali_cutmix.ops`` chooses."""
