"""flowflexd: turns files dropped into watched folders into FlowFlex events."""

__version__ = "0.1.0"
