"""The agent's admission limits, message capping and LoadModel checks, without sockets (issue 23)."""

from __future__ import annotations

import pytest

from device_agent._gen import agent_pb2
from device_agent.errors import AgentInvalidRequestError, LimitExceededError, NotFoundError
from device_agent.server import (
    MAX_STATUS_MESSAGE_CHARS,
    AgentConfig,
    _Admission,
    check_load_request,
    check_session_id,
    shorten,
    status_for,
)


def test_admission_refuses_beyond_the_limit_and_frees_on_exit() -> None:
    admission = _Admission("streams", 2, "max_streams")
    with admission.admit(), admission.admit(), pytest.raises(LimitExceededError, match="2 streams are in progress"), \
            admission.admit():
        pass
    with admission.admit(), admission.admit():  # both places were released
        pass


def test_admission_per_key_limit_leaves_room_for_other_keys() -> None:
    admission = _Admission("calls", 3, "max_infer_calls", per_key_limit=2)
    with admission.admit("hung"), admission.admit("hung"):
        with pytest.raises(LimitExceededError, match="on session 'hung'.*limit per session"), admission.admit("hung"):
            pass
        with admission.admit("other"):  # another session still gets a place
            pass


def test_messages_are_capped_and_long_values_elided() -> None:
    assert shorten("short") == "short"
    elided = shorten("x" * 10_000)
    assert len(elided) < 120 and "characters cut" in elided
    _, message = status_for(NotFoundError("y" * 100_000))
    assert len(message) <= MAX_STATUS_MESSAGE_CHARS + 40
    with pytest.raises(NotFoundError, match="100000 characters"):
        check_session_id("s" * 100_000)


@pytest.mark.parametrize(("request_fields", "match"), [
    ({"threads": 9}, "at most 8 .4 per CPU, 2 CPUs"),
    ({"preprocessing": agent_pb2.Preprocessing(mean=[float("nan")])}, "mean must be finite"),
    ({"preprocessing": agent_pb2.Preprocessing(std=[1.0, 0.0, 1.0])}, "std must be non-zero"),
    ({"preprocessing": agent_pb2.Preprocessing(std=[1.0] * 65)}, "std has 65 values"),
])
def test_load_request_checks(request_fields: dict, match: str) -> None:
    with pytest.raises(AgentInvalidRequestError, match=match):
        check_load_request(agent_pb2.LoadModelRequest(sha256="0" * 64, **request_fields), cpu_count=2)
    check_load_request(agent_pb2.LoadModelRequest(sha256="0" * 64, threads=8), cpu_count=2)


def test_handler_threads_cover_every_admitted_call_plus_control() -> None:
    config = AgentConfig(max_streams=3, max_infer_calls=5)
    assert config.handler_threads > config.max_streams + config.max_infer_calls
    with pytest.raises(ValueError, match="at least 1"):
        AgentConfig(max_streams=0)
