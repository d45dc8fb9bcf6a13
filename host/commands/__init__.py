"""``dflare`` subcommands, one module each, registered by ``host.cli``."""
