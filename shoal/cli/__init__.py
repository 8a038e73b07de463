"""Thin command-line layer: parses options, calls the subsystem packages, prints tables."""
