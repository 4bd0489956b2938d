"""The files the README's steps need, carried inside the package (``flowflexd example``).

Each is a link to the one at the top of the repository, so a wheel carries the
same bytes a checkout has and neither can drift from the other.
"""
