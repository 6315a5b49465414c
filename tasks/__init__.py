"""Prefect tasks: one thin wrapper per pipeline stage over slade_core (see tasks.stage)."""
