"""The skip for tests that need TensorFlow (the ``repair`` extra), written once."""

from __future__ import annotations

import importlib.util

import pytest

#: Skips a test where TensorFlow is not installed, saying how to install it.
requires_tensorflow = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None,
    reason="TensorFlow is not installed: pip install dflare-edge[repair] (or '.[dev,repair]')")
