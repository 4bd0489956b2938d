"""The engine: a file's life, its outcomes, and the workers that carry it."""
