"""Test doubles that stand in for external services (all local, no network)."""
