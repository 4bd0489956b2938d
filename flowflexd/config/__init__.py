"""The configuration: every key defined once, loaded and checked with every problem named."""
