"""Loss plots: the side-by-side comparison of runs trained on the same tokens."""

from __future__ import annotations

import json

import matplotlib.image
import pytest

from motif_data.train.plot import plot_comparison


def _metrics(path, losses):
    lines = [
        {"step": i + 1, "tokens": 100 * (i + 1), "loss": loss, "domain_loss": {"web": loss, "code": loss + 1}}
        for i, loss in enumerate(losses)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_comparison_png_is_written_for_two_runs(tmp_path):
    a = _metrics(tmp_path / "a.jsonl", [5.0, 4.0, 3.5])
    b = _metrics(tmp_path / "b.jsonl", [5.0, 4.5, 4.0])
    png = plot_comparison({"motif": a, "baseline": b}, tmp_path / "arch.png", title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert width > height > 100
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no temporary file left behind


def test_comparison_of_an_empty_run_says_what_is_missing(tmp_path):
    a = _metrics(tmp_path / "a.jsonl", [5.0])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="holds no steps"):
        plot_comparison({"a": a, "empty": empty}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_tail_losses_average_the_last_steps_per_domain(tmp_path):
    from motif_data.train.plot import read_metrics, tail_losses

    path = _metrics(tmp_path / "m.jsonl", [9.0, 8.0, 6.0, 4.0])
    means = tail_losses(read_metrics(path), tail=0.5)  # the last 2 of 4 steps
    assert means["all"] == 5.0 and means["web"] == 5.0 and means["code"] == 6.0
    assert means["korean"] != means["korean"]  # nan: no step had Korean
