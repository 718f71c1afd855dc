"""The README's main job runs end to end, and its scores do what they are for."""

import json

import pytest

from datadiet import demo


def test_demo_scores_find_flipped_labels(tmp_path, capsys):
    summary = demo.main(epochs=15, seed=0, label_noise=0.05, top=5, out_dir=str(tmp_path))
    out = capsys.readouterr().out
    assert "hardest 5 training samples" in out
    assert (tmp_path / "scores.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "summary.json").read_text())["flipped"] == summary["flipped"] > 0
    # Random ranking finds ~5% flipped labels in the top-k; difficulty scores must do far better.
    assert min(summary["flipped_found_in_top_k"].values()) > 0.5, summary
    assert "cpu" in summary["timings_s"] and "torch" in summary["timings_s"]
    subsets = summary["subsets"]
    easy, rand = subsets["easiest per class by GraNd"], subsets["random, same size"]
    assert easy["size"] == rand["size"] < subsets["all training data"]["size"]
    # Dropping the hardest 10% per class removes most flipped labels; a random 90% keeps ~5%.
    assert easy["flipped_rate"] < 0.5 * rand["flipped_rate"], subsets


def test_demo_merges_members_into_soups(tmp_path):
    summary = demo.main(epochs=6, seed=1, label_noise=0.05, top=3, out_dir=str(tmp_path), members=3, density=0.8)
    e = summary["ensemble"]
    assert len(e["members_val_accuracy"]) == 3
    # The greedy soup starts from the best member and only accepts improvements.
    assert e["greedy_soup_val_accuracy"] >= max(e["members_val_accuracy"])
    assert e["greedy_soup_members"][0] == max(range(3), key=lambda m: e["members_val_accuracy"][m])
    assert e["pruned_sparsity"] == pytest.approx(0.2, abs=1e-3) and e["uniform_soup_val_accuracy"] > 0.5
