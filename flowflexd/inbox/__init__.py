"""One inbox on disk: what is in it, when a file is whole, claims, done and failed."""
