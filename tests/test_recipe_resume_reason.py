"""``benchmarks/recipe_resume.py`` names a failed run's root cause in its table, not torchrun's summary.

torchrun prints the worker's traceback, then its own ChildFailedError and a box of ``=`` lines; the table
row showed the box's last line ("====...") until the reason was taken from the first exception line.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("recipe_resume", ROOT / "benchmarks" / "recipe_resume.py")
assert spec is not None and spec.loader is not None
recipe_resume = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe_resume)

# torchrun's stderr when the worker fails (CUDA asked of a CPU-only torch build), paths shortened.
TORCHRUN_STDERR = """\
Traceback (most recent call last):
  File "recipes/train_kinetics.py", line 40, in <module>
    torch.cuda.set_device(local_rank)
AttributeError: module 'torch._C' has no attribute '_cuda_setDevice'
E1206 04:47:19.148000 26846 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 1)
Traceback (most recent call last):
  File "torch/distributed/run.py", line 900, in <module>
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
recipes/train_kinetics.py FAILED
------------------------------------------------------------
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""


def test_the_workers_exception_is_the_reason() -> None:
    reason = recipe_resume.root_cause(TORCHRUN_STDERR)
    assert reason == "AttributeError: module 'torch._C' has no attribute '_cuda_setDevice'"


def test_without_an_exception_the_last_line_with_words() -> None:
    assert recipe_resume.root_cause("step 3 of 8\nKilled\n=====\n") == "Killed"
    assert recipe_resume.root_cause("") == "no output"
