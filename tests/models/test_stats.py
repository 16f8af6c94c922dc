"""The stats script's counts on the meta device."""

from __future__ import annotations

import pytest

from chunkformer.models.stats import PAPER, count, markdown_table, paper_view


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


@pytest.mark.parametrize(
    ("name", "frames", "params", "all_gmacs", "row"),
    [
        # TimeSformer's Table 1: 121.4M, 0.59 TFLOPs for 3 views (196.7 G each); fvcore-style counts.
        ("timesformer_base", 8, 121_566_352, 195.83, "| timesformer_base | 121.57M | 121.40M | +0.1% |"),
        # Video Swin's Table 1: Swin-T 28.2M, 88 GFLOPs per 32 x 224 x 224 view.
        ("video_swin_t", 32, 28_158_070, 87.76, "| video_swin_t | 28.16M | 28.20M | -0.1% |"),
        ("vivit_b_fe", 32, 115_062_928, 283.34, "| vivit_b_fe | 115.06M | - | - |"),
    ],
)
def test_zoo_counts_at_their_papers_views(
    name: str, frames: int, params: int, all_gmacs: float, row: str
) -> None:
    assert paper_view(name) == (frames, 224)
    stats = count(name, frames, 224)
    assert stats.params == params
    assert stats.all_macs / 1e9 == pytest.approx(all_gmacs, abs=0.01)
    paper = PAPER.get(name)
    if paper is not None:
        # Within 0.5 % of the paper's FLOPs in its own (fvcore) convention.
        assert paper.counts == "all" and stats.all_macs / 1e9 == pytest.approx(paper.gflops, rel=0.005)
    table = markdown_table([stats])
    assert row in table and f"| {frames} x 224² |" in table
