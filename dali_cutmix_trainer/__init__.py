"""The trainer's machinery: the training step and epoch, evaluation and the lr schedule
(:mod:`dali_cutmix_trainer.engine`), checkpoints and the run folder (:mod:`dali_cutmix_trainer.checkpoint`), the curves
(:mod:`dali_cutmix_trainer.curves`) and the model (:mod:`dali_cutmix_trainer.model`). ``train.py``, ``study.py`` and
``dali_cutmix_bench/`` import it; nothing in ``dali_cutmix`` or ``pipelines`` does."""
