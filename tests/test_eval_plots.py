"""Eval plots show every series, and label where needles really landed."""

from __future__ import annotations

from eval_fixtures import InductionCopier, word_tokenizer

from statex_hf.eval import plot_accuracy_by_length, plot_mqar, run_niah
from statex_hf.eval.plots import _shifted, _style, heatmap_cell_label, plot_lines


def test_series_at_the_same_value_are_drawn_side_by_side_with_their_own_marks():
    xs = [256, 512, 1024]
    placed = [_shifted(xs, i, 3, xs, log_x=True) for i in range(3)]
    for column in zip(*placed):  # at each x, three distinct positions around the true one
        assert len(set(column)) == 3 and min(column) < column[1] < max(column)
    assert placed[1] == xs  # the middle series sits on the true x
    assert _shifted([1, 2, 3], 0, 2, [1, 2, 3], log_x=False) == [0.97, 1.97, 2.97]
    styles = [_style(i) for i in range(4)]
    assert len({(s["marker"], s["linestyle"]) for s in styles}) == 4


def test_line_plots_are_written(tmp_path):
    same = {"a": ([256, 512], [1.0, 1.0]), "b": ([256, 512], [1.0, 1.0])}
    for path in (
        plot_accuracy_by_length(same, tmp_path / "by_length.png", "t", errors={"a": [0, 0], "b": [0.1, 0]}),
        plot_lines(same, tmp_path / "lines.png", "t", xlabel="pairs"),
        plot_mqar(
            {"lengths": [256, 512], "num_pairs": [4, 8], "accuracy": [[1.0, 1.0], [1.0, None]]}, tmp_path / "m.png"
        ),
    ):
        assert path.read_bytes().startswith(b"\x89PNG")


def test_heatmap_labels_the_depth_the_needle_landed_at_when_it_moved():
    tokenizer = word_tokenizer()
    results = run_niah(
        InductionCopier(len(tokenizer)), tokenizer, lengths=[90, 400], depths=[0.25, 1.0], samples=3, progress=False
    )
    for i, length in enumerate(results["lengths"]):
        for j, depth in enumerate(results["depths"]):
            landed = [r["actual_depth"] for r in results["records"] if r["length"] == length and r["depth"] == depth]
            assert results["placed_depth"][i][j] == sum(landed) / len(landed)
    assert heatmap_cell_label(0.6, 0.25, 0.08) == "0.60 @0.08"
    assert heatmap_cell_label(0.6, 0.25, 0.27) == "0.60"
    assert results["placed_depth"][0][1] == 1.0  # the end is always a boundary
