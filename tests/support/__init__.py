"""Shared test support: real PostgreSQL fixtures and helpers for process-level tests."""
