"""Pure-Python twins of the compiled modules in ext/: same names, same API, same results."""
