"""Pure functions: which rule takes a name, and what its templates render to."""
