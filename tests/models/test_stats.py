"""The stats script's counts on the meta device."""

from __future__ import annotations

import pytest

from chunkformer.models.stats import count, markdown_table


def test_sct_s_counts_match_the_design_note() -> None:
    stats = count("sct_s", n_hashes=1)
    assert stats.params == 16_033_072
    assert stats.linear_macs / 1e9 == pytest.approx(88.0, abs=0.05)
    # LSH block attention is counted on meta (matmul path): counted >= analytic (plus hashing and merge).
    assert stats.lsh_attention_macs_analytic > 0
    assert (
        stats.lsh_attention_macs_analytic
        <= stats.lsh_attention_macs_counted
        < 1.3 * stats.lsh_attention_macs_analytic
    )
    assert "| sct_s | 16.03M | 18.72M |" in markdown_table([stats], 24, 224, 1)
