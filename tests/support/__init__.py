"""Reusable test helpers (servers, fixtures)."""
