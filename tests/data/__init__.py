"""Generators for test inputs (built at test time; no binaries committed)."""
