"""Bounds of a generated image's sides, defined once: :mod:`vlgraph.config` (a model's
``max_height``, ``max_width`` and ``default_size``) and :mod:`vlgraph.generation_params` (what a
request may ask, re-exported there) both read them, and neither imports the other for them."""

from __future__ import annotations

#: Height and width must be multiples of this (the VAE downsamples by 8).
SIZE_MULTIPLE = 8
#: Smallest height and width. The pipelines run from 8 px, but below 64 px the UNet's three
#: downsamplings leave latents of 1 px and the images are noise; the config's ``max_height``,
#: ``max_width`` and ``default_size`` start at 64 as well.
MIN_SIZE = 64
