"""The flags that say how to reach a target (token, TLS, connect timeout), shared by the subcommands.

``dflare run`` declares the same settings as campaign settings (``host.campaign.config``), so they can
also sit in its TOML file; ``info`` and ``compare`` take them from here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from host.targets.options import TargetOptions, resolve_token


def add_target_arguments(p: argparse.ArgumentParser, connect_timeout: bool = True) -> None:
    """Add ``--token-file``, ``--tls-ca-file``, ``--tls-server-name`` (and ``--connect-timeout-s``)."""
    p.add_argument("--token-file", type=Path, metavar="F", help="agent token for grpc:// targets (else $DFLARE_TOKEN)")
    p.add_argument("--tls-ca-file", type=Path, metavar="PEM",
                   help="PEM root certificate(s) that verify the agent's TLS certificate (turns TLS on; "
                   "grpcs://HOST:PORT uses the system's roots)")
    p.add_argument("--tls-server-name", metavar="NAME",
                   help="the name the agent's certificate was issued to, when not the URI's host")
    if connect_timeout:
        p.add_argument("--connect-timeout-s", type=float, metavar="S",
                       help="seconds to wait for an agent to accept the connection (default 10)")


def target_options(args: argparse.Namespace) -> TargetOptions:
    """The options the flags give; the token file is read here, so a bad one fails before any work."""
    return TargetOptions(token=resolve_token(None, args.token_file),
                         connect_timeout_s=getattr(args, "connect_timeout_s", None),
                         tls_ca_file=args.tls_ca_file, tls_server_name=args.tls_server_name)
