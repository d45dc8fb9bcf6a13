"""The agent's assembly without subprocesses: run_server on port 0, status table, config checks, CLI sizes."""

from __future__ import annotations

import argparse
import inspect

import grpc
import pytest

from device_agent import errors as agent_errors
from device_agent.cli import parse_bytes
from device_agent.errors import (
    AgentInvalidRequestError,
    AgentShuttingDownError,
    AgentWorkerCrashedError,
    InputError,
    LimitExceededError,
    ModelFormatError,
    NotFoundError,
    RuntimeDelegateUnavailableError,
)
from device_agent.server import AgentConfig, is_loopback, run_server, status_for
from host import errors as host_errors
from host.errors import AuthenticationError
from host.targets.options import resolve_token
from host.targets.remote import RemoteTarget, parse_uri


@pytest.mark.parametrize("error, code", [
    (AgentInvalidRequestError("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (InputError("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (ModelFormatError("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError("x"), grpc.StatusCode.NOT_FOUND),
    (LimitExceededError("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (RuntimeDelegateUnavailableError("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (AgentWorkerCrashedError("x"), grpc.StatusCode.ABORTED),
    (AgentShuttingDownError("x"), grpc.StatusCode.UNAVAILABLE),
    (KeyError("x"), grpc.StatusCode.INTERNAL),
])
def test_status_table(error, code):
    assert status_for(error)[0] == code


def test_agent_errors_have_one_root_and_no_host_error_name():
    agent = {name: cls for name, cls in inspect.getmembers(agent_errors, inspect.isclass)
             if issubclass(cls, Exception) and cls.__module__ == agent_errors.__name__}
    host = {name for name, cls in inspect.getmembers(host_errors, inspect.isclass) if issubclass(cls, Exception)}
    assert len(agent) > 5, "no errors found: the scan is broken"
    assert [name for name, cls in agent.items() if not issubclass(cls, agent_errors.AgentError)] == []
    assert sorted(agent.keys() & host) == []


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("192.168.1.5", False), ("::", False), ("example.com", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_config_refuses_network_bind_without_token_and_half_tls():
    with pytest.raises(ValueError, match="not a loopback address"):
        AgentConfig(host="0.0.0.0")
    assert AgentConfig(host="0.0.0.0", token="t").token == "t"
    with pytest.raises(ValueError, match="--tls-cert and --tls-key"):
        AgentConfig(tls_cert=b"cert")
    with pytest.raises(ValueError, match="cannot exceed"):
        AgentConfig(max_message_bytes=1000, max_batch_bytes=2000)


@pytest.mark.parametrize("text, value", [("1048576", 1 << 20), ("64M", 64 << 20), ("64MiB", 64 << 20),
                                         ("1g", 1 << 30), ("512K", 512 << 10)])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "1.5M", "-3", "0", "12 parsecs"])
def test_parse_bytes_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bytes(text)


def test_run_server_yields_a_bound_port_and_checks_tokens(tmp_path, monkeypatch):
    monkeypatch.delenv("DFLARE_TOKEN", raising=False)
    with run_server(0, token="secret", cache_dir=str(tmp_path)) as port:
        assert port > 0
        info = RemoteTarget(f"grpc://127.0.0.1:{port}", token="secret").info()
        assert info["protocol_major"] == 1 and info["sessions"] == 0
        with pytest.raises(AuthenticationError, match="token refused"):
            RemoteTarget(f"grpc://127.0.0.1:{port}", token="guess").info()


def test_token_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("DFLARE_TOKEN", "from-env")
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert resolve_token("given", token_file) == "given"
    assert resolve_token(None, token_file) == "from-file"
    assert resolve_token() == "from-env"
    monkeypatch.delenv("DFLARE_TOKEN")
    assert resolve_token() is None


@pytest.mark.parametrize("uri, expected", [
    ("grpc://127.0.0.1:50051", ("127.0.0.1", 50051)),
    ("grpc://[::1]:7", ("::1", 7)),
    ("grpc://phone.lab:1234", ("phone.lab", 1234)),
])
def test_parse_uri(uri, expected):
    assert parse_uri(uri) == expected


@pytest.mark.parametrize("uri", ["grpc://host", "http://h:1", "grpc://:5", "grpc://h:port"])
def test_parse_uri_rejects(uri):
    from host.errors import ConfigError

    with pytest.raises(ConfigError, match="grpc://HOST:PORT"):
        parse_uri(uri)


def test_serve_flags_set_the_admission_limits_and_the_batch_timeout(monkeypatch):
    from device_agent.cli import build_parser, config_from_args
    from device_agent.worker import BATCH_TIMEOUT_ENV

    monkeypatch.delenv(BATCH_TIMEOUT_ENV, raising=False)
    args = build_parser().parse_args(["serve", "--max-streams", "4", "--max-infer-calls", "6",
                                      "--max-infer-calls-per-session", "3", "--stream-idle-timeout-s", "5",
                                      "--batch-timeout-s", "12.5"])
    config = config_from_args(args)
    assert (config.max_streams, config.max_infer_calls, config.max_infer_calls_per_session) == (4, 6, 3)
    assert config.stream_idle_timeout_s == 5.0 and config.handler_threads == 4 + 6 + 8
    import os

    assert float(os.environ[BATCH_TIMEOUT_ENV]) == 12.5
    with pytest.raises(ValueError, match="--batch-timeout-s must be positive"):
        config_from_args(build_parser().parse_args(["serve", "--batch-timeout-s", "0"]))
    with pytest.raises(ValueError, match="must be at least 1"):
        config_from_args(build_parser().parse_args(["serve", "--max-streams", "0"]))
