"""Prefect flows and reports that operate the DVC pipeline. Never imports torch."""
