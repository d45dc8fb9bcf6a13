"""How the agent starts a Python child (the model worker): its own interpreter, however it was launched.

``sys.executable`` is enough where the interpreter is an ordinary executable. The self-contained
Android runtime is not: its ``bin/python3`` runs only through the bundled loader
(``lib/ld-linux-aarch64.so.1 --library-path lib bin/python3``), since the phone has no
``/lib/ld-linux-aarch64.so.1`` for the kernel to use. Its launch command therefore sets
:data:`LAUNCHER_ENV` to that argv prefix (shell words), and the worker is started with it.
"""

from __future__ import annotations

import os
import shlex
import sys

#: Environment variable holding the argv prefix that runs this agent's Python (shell words).
LAUNCHER_ENV = "DFLARE_AGENT_LAUNCHER"


def python_command() -> list[str]:
    """The argv prefix that runs this Python: ``$DFLARE_AGENT_LAUNCHER`` split as shell words, else sys.executable.

    Raises:
        RuntimeError: the variable is set but not valid shell words, or there is no interpreter path.
    """
    text = os.environ.get(LAUNCHER_ENV, "").strip()
    if text:
        try:
            words = shlex.split(text)
        except ValueError as exc:
            raise RuntimeError(f"${LAUNCHER_ENV}={text!r} is not valid shell words: {exc}") from None
        if words:
            return words
    if not sys.executable:
        raise RuntimeError(f"this Python does not know its own executable: set ${LAUNCHER_ENV} to the command "
                           "that starts it")
    return [sys.executable]
