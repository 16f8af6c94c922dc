"""The optional packages a training script needs, checked before any work starts.

A script that finds a package missing after hours of training loses them; these checks run first and name
the extra that installs what is missing::

    from chunkformer.engine import require

    require("av", "tyro", "tensorboard", purpose="my_train.py")  # MissingDependencyError if one is absent
"""

from __future__ import annotations

import importlib.util

__all__ = ["OPTIONAL", "MissingDependencyError", "require"]

# import name -> (what it is for, the chunkformer extra that installs it)
OPTIONAL: dict[str, tuple[str, str]] = {
    "av": ("PyAV, to decode and write videos", "video"),
    "tyro": ("tyro, for the command line", "video"),
    "tensorboard": ("TensorBoard, for the training logs", "video"),
    "tqdm": ("tqdm, for progress bars", "video"),
    "safetensors": ("safetensors, to export weights", "video"),
    "matplotlib": ("matplotlib, for figures", "viz"),
}


class MissingDependencyError(ImportError):
    """Optional packages a script needs are not installed; the message names them and the install line."""


def require(*modules: str, purpose: str) -> None:
    """Raise ``MissingDependencyError`` naming every module of ``modules`` that is not installed.

    ``find_spec`` only looks the packages up, so the check costs milliseconds and imports nothing.
    """
    unknown = [name for name in modules if name not in OPTIONAL]
    if unknown:
        raise ValueError(f"require: unknown optional modules {unknown}; known: {sorted(OPTIONAL)}")
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if not missing:
        return
    extras = sorted({OPTIONAL[name][1] for name in missing})
    what = "; ".join(OPTIONAL[name][0] for name in missing)
    raise MissingDependencyError(
        f"{purpose} needs {', '.join(missing)} ({what}), which is not installed: "
        f"pip install 'chunkformer[{','.join(extras)}]'"
    )
