"""Wiring: settings, the Starlette app, process roles, the embedded read store, CLI."""
