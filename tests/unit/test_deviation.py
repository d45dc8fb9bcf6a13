"""host.search.deviation: the success criterion, with and without ties; the campaign setting."""

from __future__ import annotations

import argparse

import numpy as np

from host.campaign.command import add_arguments, config_from_args
from host.campaign.config import CampaignConfig
from host.search.deviation import deviates, top1_tied

TIE = [0.25, 0.375, 0.375, 0.0]  # an int8 softmax lands on a coarse grid: classes 1 and 2 tie
CLEAR_1 = [0.25, 0.5, 0.25, 0.0]
CLEAR_2 = [0.25, 0.25, 0.5, 0.0]


def test_top1_tied_per_row() -> None:
    assert top1_tied(np.array([TIE, CLEAR_1, [1.0, 1.0, 1.0, 1.0]])).tolist() == [True, False, True]
    assert not top1_tied(np.array([0.7]))


def test_ties_count_by_default_and_not_with_ignore_ties() -> None:
    original = np.array([CLEAR_2, CLEAR_2, TIE, CLEAR_1])
    compressed = np.array([TIE, CLEAR_1, CLEAR_2, CLEAR_1])  # argmax of TIE is 1, the lower class
    assert deviates(original, compressed).tolist() == [True, True, True, False]
    assert deviates(original, compressed, ignore_ties=True).tolist() == [False, True, False, False]


def test_ignore_ties_setting_reaches_the_config_and_keeps_old_identities(tmp_path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--original", "o.tflite", "--compressed", "c.tflite", "--seeds", "s.npz"]
    assert config_from_args(parser.parse_args([*base, "--ignore-ties"])).ignore_ties is True
    plain = config_from_args(parser.parse_args(base))
    assert plain.ignore_ties is False
    # a campaign at the default has the identity it had before the setting existed (so it resumes)
    assert "ignore_ties" not in plain.identity()
    assert plain.replace(ignore_ties=True).identity()["ignore_ties"] is True
    toml = tmp_path / "c.toml"
    toml.write_text('original = "o.tflite"\ncompressed = "c.tflite"\nseeds = "s.npz"\nignore_ties = true\n')
    assert CampaignConfig.from_sources(toml).ignore_ties is True
