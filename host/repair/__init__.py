"""Repair: fine-tune the original model on a campaign's triggering inputs and re-compress it."""
