"""Every session states the whole contract of host.targets.base.Session: no attribute is ever missing.

The adb session shares the remote one's figures (tests/integration/test_adb_target.py loads through it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from host.targets import ModelSpec, open_target
from host.targets.base import Session

MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "digits28-int8.tflite"
CONTRACT = ("model", "input_spec", "output_specs", "delegated_nodes", "cpu_ops", "last_invoke_ms", "peak_memory_bytes")


def test_a_local_session_has_every_figure_and_times_its_invoke():
    target = open_target("local:")
    session = target.load(ModelSpec.from_path(MODEL, delegate="xnnpack"))
    try:
        assert isinstance(session, Session)
        assert all(hasattr(session, name) for name in CONTRACT)
        assert session.delegated_nodes is not None and session.delegated_nodes >= 1  # XNNPACK took the graph
        assert session.peak_memory_bytes is None  # not measured in process: None, not a made-up number
        session.infer(np.zeros((2, 28, 28, 1), np.uint8))
        assert session.last_invoke_ms is not None and session.last_invoke_ms > 0
    finally:
        session.close()


def test_a_remote_session_has_every_figure_and_reports_the_agents_invoke_time(agent_uri, agent_token):
    target = open_target(agent_uri, token=agent_token)
    try:
        session = target.load(ModelSpec.from_path(MODEL, delegate="xnnpack"))
        assert isinstance(session, Session)
        assert session.last_invoke_ms is None  # nothing ran yet: unknown, not zero
        session.infer(np.zeros((2, 28, 28, 1), np.uint8))
        assert session.last_invoke_ms is not None and session.last_invoke_ms > 0
        assert session.delegated_nodes is not None and session.delegated_nodes >= 1
        session.close()
    finally:
        target.close()
