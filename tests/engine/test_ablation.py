"""The ablation study's variants, summary and process pool (the end-to-end study: tests/recipes)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import chunkformer.engine.ablation as ablation
from chunkformer.models import create_model


def test_variants_change_only_what_their_table_ablates() -> None:
    reference = create_model("ablation_reference", num_classes=16, num_frames=8, img_size=32).config
    assert reference.shift == 1 and reference.clip_depth == 4 and reference.stages[0].shifted_depth == 1
    differs = {}
    for name in ablation.VARIANTS:
        config = create_model(f"ablation_{name}", num_classes=16, num_frames=8, img_size=32).config
        differs[name] = {key for key in vars(reference) if getattr(config, key) != getattr(reference, key)}
    assert differs == {
        "reference": set(),
        "standard_msa": {"shift"},
        "shift_5": {"shift"},
        "two_shifted": {"stages"},
        "vit_patch8": {"patch_size", "stages"},
        "vit_patch4": {"chunk_size"},
        "clip_depth_2": {"clip_depth"},
    }
    # The ViT variants attend over the whole frame: one window covers the token grid of a 32 x 32 frame.
    for name in ("vit_patch8", "vit_patch4"):
        config = create_model(f"ablation_{name}", num_classes=16, num_frames=8, img_size=32).config
        assert config.chunk_size == 32 // config.patch_size
    assert reference.chunk_size < 32 // reference.patch_size


def test_summary_pairs_seeds_with_the_reference() -> None:
    rows = [
        {"variant": "reference", "seed": 0, "top1": 0.5, "seconds": 1.0},
        {"variant": "reference", "seed": 1, "top1": 0.7, "seconds": 1.0},
        {"variant": "standard_msa", "seed": 0, "top1": 0.4, "seconds": 3.0},
        {"variant": "standard_msa", "seed": 1, "top1": 0.7, "seconds": 5.0},
    ]
    reference, standard = ablation.summarize(rows, ("reference", "standard_msa"))
    assert reference["top1_mean"] == pytest.approx(0.6) and reference["top1_std"] == pytest.approx(
        0.1414, abs=1e-4
    )
    assert math.isnan(reference["delta_mean"])
    assert standard["delta_mean"] == pytest.approx(-0.05) and standard["delta_std"] == pytest.approx(
        0.0707, abs=1e-4
    )
    assert standard["seconds"] == pytest.approx(4.0)


def test_unknown_variant_is_an_error_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown variants.*available: reference"):
        ablation.AblationConfig(variants=("reference", "swin"))


def test_pool_workers_end_when_the_study_process_is_killed(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    # A parent that starts one pool worker with the study's initializer, prints the worker's pid, and sleeps.
    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing, os, sys, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "import chunkformer.engine.ablation as ablation\n"
        "if __name__ == '__main__':\n"
        "    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn'),\n"
        "                               initializer=ablation._exit_with_parent, initargs=(os.getpid(),))\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the pool worker outlived its killed parent by 30 s")
    finally:
        parent.kill()
