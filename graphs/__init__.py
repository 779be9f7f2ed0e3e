"""Builders that bind the model deployments from a validated profile (``app``), the model
registry they read (``registry``) and the caption -> diffusion pipeline (``similar_image``)."""
