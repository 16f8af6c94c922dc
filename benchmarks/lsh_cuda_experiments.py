"""Two CUDA measurements behind docs/benchmarks.md's GPU section (bf16, batch 1, 4 heads, head dim 64,
bucket 64, shared QK, the benchmark's clustered inputs).

Usage (on a CUDA machine, from the repository root)::

    python benchmarks/lsh_cuda_experiments.py gathers      # row-gather variants: micro and whole-call times
    python benchmarks/lsh_cuda_experiments.py determinism  # which results repeat bit for bit, and the cost
    python benchmarks/lsh_cuda_experiments.py key-views    # key views gathered per view vs copied from blocks

``gathers`` times gathering 524,288 random rows of 128 bytes (a 64K-token round's key views) five exact ways,
checks that each gives lsh_attention bit-identical outputs, and times a whole 16K / 64K forward+backward with
each, interleaved. ``determinism`` runs each case twice, by default and under
``torch.use_deterministic_algorithms(True)``, and says which of the output and gradients repeat bit for bit.
``key-views`` compares the CUDA key views as built before 2026-11-26 (each view's rows gathered: every key
block twice) with the current ones (each block gathered once, the views copied contiguously): identical bits,
and whole-call times interleaved.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
from lsh_attention import _clustered_inputs  # noqa: E402

from chunkformer.ops import lsh_attention, lsh_gather, lsh_merge, lsh_rounds  # noqa: E402

# Each variant replaces a function where its callers look it up.
_SELECT_ROWS = ((lsh_gather, "select_rows"), (lsh_merge, "select_rows"))
_KEY_VIEWS = ((lsh_rounds, "key_views"),)
_original_select = lsh_gather.select_rows


def _index_select(x, rows, buffers, name):
    return x.reshape(-1, x.shape[-1]).index_select(0, rows)


def _advanced(x, rows, buffers, name):
    return x.reshape(-1, x.shape[-1])[rows]


def _wide(dtype: torch.dtype):
    def select(x, rows, buffers, name):
        flat = x.reshape(-1, x.shape[-1])
        return flat.view(dtype).index_select(0, rows).view(flat.dtype)

    return select


VARIANTS = {
    "index_select out=": _original_select,
    "index_select": _index_select,
    "advanced indexing": _advanced,
    "as int64": _wide(torch.int64),
    "as complex128": _wide(torch.complex128),
}


def _event_ms(fn, repeats: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _call(length: int, n_hashes: int, dtype: str, causal=False, padded=False, shared_qk=True) -> dict:
    qk, v = _clustered_inputs(length, seed=1, device="cuda", dtype=dtype)
    k = None if shared_qk else (qk.flip(-1) + 0.1).detach().requires_grad_(True)
    qk.requires_grad_(True)
    v.requires_grad_(True)
    mask = None
    if padded:
        mask = torch.zeros(1, length, dtype=torch.bool, device="cuda")
        mask[:, -length // 7 :] = True
    generator = torch.Generator(device="cuda").manual_seed(0)
    out = lsh_attention(
        qk,
        k,
        v,
        bucket_size=64,
        n_hashes=n_hashes,
        shared_qk=shared_qk,
        is_causal=causal,
        key_padding_mask=mask,
        generator=generator,
    )
    out.float().square().sum().backward()
    torch.cuda.synchronize()
    return {
        "output": out.detach(),
        "grad q": qk.grad,
        "grad v": v.grad,
        **({} if shared_qk else {"grad k": k.grad}),
    }


def _step_ms(length: int, repeats: int) -> list[float]:
    qk, v = _clustered_inputs(length, seed=1, device="cuda", dtype="bf16")
    qk.requires_grad_(True)
    v.requires_grad_(True)

    def step() -> None:
        qk.grad = v.grad = None
        generator = torch.Generator(device="cuda").manual_seed(0)
        lsh_attention(
            qk, None, v, bucket_size=64, n_hashes=4, shared_qk=True, generator=generator
        ).float().sum().backward()

    step()
    step()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def gathers() -> None:
    groups, length, width = 4, 65536, 64
    source = torch.randn(groups * length, width, device="cuda", dtype=torch.bfloat16)
    rows = torch.randint(0, groups * length, (2 * groups * length,), device="cuda")
    print(f"gather {rows.numel()} random rows of {width} bf16 (ms, median of 20):")
    for name, select in VARIANTS.items():
        print(f"  {name:20s} {_event_ms(lambda select=select: select(source, rows, None, 'k')):.3f}")
    print(f"  {'copy of the source':20s} {_event_ms(lambda: source.clone()):.3f}")
    cases = [
        (65536, 4, "bf16"),
        (1000, 4, "bf16", False, True),
        (777, 3, "bf16", True, False),
        (4096, 2, "bf16", True, True),
    ]
    _compare_variants(_SELECT_ROWS, VARIANTS, cases)


def determinism() -> None:
    cases = [
        (65536, 4, "bf16"),
        (16384, 4, "fp32"),
        (1000, 4, "bf16", False, True),
        (4096, 2, "fp32", True, True),
        (3000, 3, "bf16", False, False, False),
    ]
    for deterministic in (False, True):
        torch.use_deterministic_algorithms(deterministic)
        print(f"torch.use_deterministic_algorithms({deterministic}):")
        for case in cases:
            first, second = _call(*case), _call(*case)
            spread = (first["grad v"].float() - second["grad v"].float()).abs().max().item()
            repeats = ", ".join(f"{k}: {torch.equal(first[k], second[k])}" for k in first)
            print(f"  {case}: repeat bit for bit {{{repeats}}}, grad v max difference {spread:.3g}")
        print(f"  L=65536 fwd+bwd {statistics.median(_step_ms(65536, 10)):.2f} ms (median of 10)")
    torch.use_deterministic_algorithms(False)


def _per_view_key_views(k, v, piece_rows, round_index, blocks, buffers, windows):
    """The CUDA key views before 2026-11-26: every view's rows gathered, so each key block twice."""
    if windows and piece_rows.key_order is not None:
        return _original_key_views(k, v, piece_rows, round_index, blocks, buffers, windows)
    rows = piece_rows("key", round_index, blocks)
    n_keys = piece_rows.key.shape[-1]
    return lsh_gather.gather_rows(k, rows, n_keys, buffers, "k"), lsh_gather.gather_rows(
        v, rows, n_keys, buffers, "v"
    )


_original_key_views = lsh_gather.key_views


def key_views() -> None:
    variants = {"gathered per view": _per_view_key_views, "blocks once, copied": _original_key_views}
    cases = [
        (65536, 4, "bf16"),
        (1000, 4, "bf16", False, True),
        (4096, 2, "fp32", False, True),
        (3000, 3, "bf16", False, False, False),
    ]
    _compare_variants(_KEY_VIEWS, variants, cases)


def _install(targets: tuple, variant) -> None:
    for module, attribute in targets:
        setattr(module, attribute, variant)


def _compare_variants(targets: tuple, variants: dict, cases: list[tuple]) -> None:
    """With the (module, attribute) ``targets`` set to each variant in turn: whether the cases' outputs and
    gradients equal the first variant's bit for bit (in deterministic mode, the only one in which gradients
    repeat on CUDA), then whole 16K / 64K forward+backward times, the variants interleaved."""
    originals = [(module, attribute, getattr(module, attribute)) for module, attribute in targets]
    torch.use_deterministic_algorithms(True)
    expected = None
    for name, variant in variants.items():
        _install(targets, variant)
        results = {case: _call(*case) for case in cases}
        expected = expected or results
        same = all(
            torch.equal(got, expected[case][key]) for case in cases for key, got in results[case].items()
        )
        print(f"  {name:20s} bit-identical outputs and gradients: {same}")
    torch.use_deterministic_algorithms(False)
    for length in (16384, 65536):
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(12):
            for name, variant in variants.items():
                _install(targets, variant)
                times[name] += _step_ms(length, 1)
        for name in variants:
            print(f"L={length} fwd+bwd {name:20s} {statistics.median(times[name]):.2f} ms (median of 12)")
    for module, attribute, original in originals:
        setattr(module, attribute, original)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=["gathers", "determinism", "key-views"])
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    {"gathers": gathers, "determinism": determinism, "key-views": key_views}[args.experiment]()


if __name__ == "__main__":
    main()
