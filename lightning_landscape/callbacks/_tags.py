"""Old import path of :mod:`lightning_landscape.callbacks.tags`, kept for code outside the callbacks."""

from lightning_landscape.callbacks.tags import *  # noqa: F403
