"""Data, not code: the playbooks fleetsync runs (a package so that importlib.resources
finds them alike in a wheel and in an editable install)."""
