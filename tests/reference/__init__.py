"""Test oracles: independent re-implementations our code is checked against (not part of the package)."""
