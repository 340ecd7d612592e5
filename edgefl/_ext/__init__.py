"""Compiled modules built from ext/*.pyx (absent when the build had no compiler)."""
