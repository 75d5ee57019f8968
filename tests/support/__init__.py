"""Helpers shared by tests: local upstreams that speak real wire formats."""
