"""gRPC core settings for small, frequent calls; applied before ``grpc`` is first imported.

Since grpcio 1.6x, gRPC core moves each call's socket reads and writes to its EventEngine thread
pool and hands the completions back to the Python thread waiting on them: every call costs
several thread wake-ups on each side. With the EventEngine endpoints off, gRPC uses its older
I/O path (epoll1), where the thread waiting for a call's completion does the socket I/O itself.
For the agent's traffic (one batch of a few KB to a few MB per call) that cuts the context
switches per call (measured with grpcio 1.85 on a loaded 2-core x86 VM, batches of 64 28x28
images: client 6 -> 2 per ``Infer`` call, agent 17 -> 9 per ``InferStream`` batch) and, by the
load, 5 to 30% of the gRPC CPU per call; see docs/benchmarks.md, "Agent throughput".

gRPC core reads ``GRPC_EXPERIMENTS`` once, when ``grpc`` is imported, so :func:`apply` must run
before that import: the agent's server module and the host's gRPC client call it at their top.
A ``GRPC_EXPERIMENTS`` set by the user always wins, and ``DFLARE_GRPC_TUNING=0`` turns this off.
A grpcio release that no longer knows an experiment's name logs one line and ignores it.
"""

from __future__ import annotations

import os
import sys

#: The gRPC core experiments switched off: EventEngine client, listener and other endpoints.
LOW_LATENCY_EXPERIMENTS = "-event_engine_client,-event_engine_listener,-event_engine_for_all_other_endpoints"
#: Environment variable gRPC core reads its experiment switches from.
GRPC_EXPERIMENTS_ENV = "GRPC_EXPERIMENTS"
#: Set to ``0`` to keep gRPC's own defaults.
TUNING_ENV = "DFLARE_GRPC_TUNING"


def apply() -> bool:
    """Switch gRPC to its low-latency I/O path for this process, if still possible.

    Returns:
        True when ``GRPC_EXPERIMENTS`` was set now; False when ``grpc`` is already imported (too
        late to matter), the user set ``GRPC_EXPERIMENTS`` or ``DFLARE_GRPC_TUNING=0``.
    """
    if "grpc" in sys.modules or GRPC_EXPERIMENTS_ENV in os.environ or os.environ.get(TUNING_ENV) == "0":
        return False
    os.environ[GRPC_EXPERIMENTS_ENV] = LOW_LATENCY_EXPERIMENTS
    return True
