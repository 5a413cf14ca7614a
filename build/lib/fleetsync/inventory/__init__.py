"""Data, not code: the default inventory and examples (a package so that
importlib.resources finds them alike in a wheel and in an editable install)."""
