"""TargetOptions: each scheme gets the options that apply to it, and open_target uses them."""

from __future__ import annotations

import pytest

from host.errors import ConfigError
from host.targets import LocalTarget, TargetOptions, open_target


def test_each_scheme_gets_only_its_options():
    options = TargetOptions(token="t", token_file="f", connect_timeout_s=2.5, allowed_external=("/lib/d.so",),
                            tls_ca_file="ca.pem", tls_server_name="agent.lab")
    assert options.for_uri("local:") == {"allowed_external": ("/lib/d.so",)}
    agent = {"token": "t", "token_file": "f", "connect_timeout_s": 2.5, "tls_ca_file": "ca.pem",
             "tls_server_name": "agent.lab"}
    assert options.for_uri("grpc://127.0.0.1:1") == options.for_uri("grpcs://127.0.0.1:1") == agent
    assert options.for_uri("adb://SERIAL") == {"connect_timeout_s": 2.5}  # the deployment brings its token
    assert TargetOptions().for_uri("grpc://h:1") == {"token": None, "token_file": None, "tls_ca_file": None,
                                                     "tls_server_name": None}


def test_grpcs_turns_tls_on_and_other_schemes_are_named():
    from host.targets.remote import RemoteTarget, parse_uri

    assert parse_uri("grpcs://[::1]:443") == ("::1", 443)
    assert RemoteTarget("grpcs://127.0.0.1:1")._tls and not RemoteTarget("grpc://127.0.0.1:1")._tls
    with pytest.raises(ConfigError, match="grpcs:// for TLS"):
        parse_uri("https://127.0.0.1:1")


def test_open_target_passes_the_local_options_and_names_a_bad_scheme():
    target = open_target("local:", TargetOptions(allowed_external=("/opt/libvendor.so",)))
    assert isinstance(target, LocalTarget) and target.allowed_external == ("/opt/libvendor.so",)
    with pytest.raises(ConfigError, match="unknown target URI 'http://x'"):
        open_target("http://x", TargetOptions(token="t"))


def test_an_unreadable_token_file_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "token.txt"
    with pytest.raises(ConfigError, match="cannot read token file .*token.txt"):
        open_target("grpc://127.0.0.1:9", TargetOptions(token_file=missing))
