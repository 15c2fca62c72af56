"""Argument types the command-line tools share."""


def parse_size(text):
    """'800x1333' -> (800, 1333); '512' -> (512, 512)."""
    h, _, w = text.partition('x')
    return int(h), int(w or h)
