"""dflare-edge host side: search engine, targets, campaigns, reports and deployment."""

__version__ = "0.1.0"
