"""The trainer's machinery: the training step and epoch, evaluation and the lr schedule
(:mod:`trainer.engine`), checkpoints and the run folder (:mod:`trainer.checkpoint`), the curves
(:mod:`trainer.curves`) and the model (:mod:`trainer.model`). ``train.py``, ``study.py`` and
``benchmarks/`` import it; nothing in ``dali_cutmix`` or ``pipelines`` does."""
