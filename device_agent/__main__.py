"""``python -m device_agent serve ...``: the same as ``dflare-agent``."""

import sys

from device_agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
