"""train.py under torchrun with one fault injected, as ``DALI_CUTMIX_TEST_FAULT`` (JSON) says, so
that a test can place it exactly whatever the machine's speed:

- ``{"kill": [rank, step]}``: that rank SIGKILLs itself right after its training step ``step`` (counted
  over the process) in the job's first attempt (``TORCHELASTIC_RESTART_COUNT`` 0);
- ``{"late": [rank, seconds]}``: that rank reaches the process group ``seconds`` late after a restart;
- ``{"bug": [rank, step]}``: that rank raises a plain ``RuntimeError`` (a bug) at that step;
- ``{"nan": [rank, step]}``: that rank's loss at that step reads as NaN (its books see a non-finite loss).

    torchrun ... tests/cluster_driver.py TRAIN.PY-FLAGS
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from dali_cutmix_trainer import engine  # noqa: E402

fault = json.loads(os.environ.get("DALI_CUTMIX_TEST_FAULT", "{}"))
rank = int(os.environ.get("RANK", "0"))
attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
if "late" in fault and attempt > 0 and rank == fault["late"][0]:
    time.sleep(fault["late"][1])
real, done = engine.train_step, [0]


def step(*args, **kwargs):
    loss = real(*args, **kwargs)
    done[0] += 1
    kind = next(iter(fault), None)
    if kind in ("kill", "bug", "nan") and rank == fault[kind][0] and done[0] == fault[kind][1]:
        if kind == "kill" and attempt == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "bug":
            raise RuntimeError("an injected bug")
        if kind == "nan":
            return loss * float("nan")
    return loss


engine.train_step = step
sys.exit(train.main(sys.argv[1:]))
