"""Kept for ``host.targets.base``, which imports ``preprocessing_for`` from here: the code is ``host.tflite.metadata``.

Every other module imports ``host.tflite.metadata``; this file goes once ``host/targets/base.py`` does too.
"""

from host.tflite.metadata import preprocessing_for

__all__ = ["preprocessing_for"]
