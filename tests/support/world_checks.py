"""Held-out images of the offline world and the checks that judge what the models say about
them: the semantic tests' shared vocabulary.

Images come from seeds at and above :data:`vlgraph.tiny.world.HELD_OUT_SEED` (the factory
trains below it), are drawn at several sizes and encoded as JPEG, PNG and WebP. Each test
records its figures with :func:`record`; the session prints them in its summary.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vlgraph.tiny.world import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_SEED,
    Scene,
    all_scenes,
    draw,
    random_scene,
)

#: Upload formats the held-out images rotate through, with their media types.
FORMATS = (
    ("JPEG", "image/jpeg", "jpg"),
    ("PNG", "image/png", "png"),
    ("WEBP", "image/webp", "webp"),
)
#: Sides the held-out images rotate through (the training pool is drawn at 64 px).
SIDES = (64, 96, 128)

#: Figures recorded by the semantic tests: (what, figure, threshold) lines for the summary.
FIGURES: list[str] = []


@dataclass(frozen=True)
class HeldOut:
    """One held-out image: what it shows, its encoded bytes and how they are encoded."""

    scene: Scene
    data: bytes
    media_type: str
    filename: str


def held_out(count: int, offset: int = 0, transform=None, distinct: bool = False) -> list[HeldOut]:
    """``count`` held-out images drawn from seed ``HELD_OUT_SEED + offset``, of ``distinct``
    scenes if asked; ``transform`` (PIL image -> PIL image) alters each image before encoding,
    for the negative controls."""
    rng = random.Random(HELD_OUT_SEED + offset)
    scenes = rng.sample(all_scenes(), count) if distinct else None
    images = []
    for index in range(count):
        scene = scenes[index] if scenes else random_scene(rng)
        image = draw(scene, rng, SIDES[index % len(SIDES)])
        if transform is not None:
            image = transform(image)
        pil_format, media_type, extension = FORMATS[index % len(FORMATS)]
        buffer = io.BytesIO()
        image.save(buffer, format=pil_format, quality=90)
        images.append(HeldOut(scene, buffer.getvalue(), media_type, f"world{index}.{extension}"))
    return images


def swap_channels(image: Image.Image) -> Image.Image:
    """The image with red and blue exchanged: what a BGR/RGB mix-up feeds a model."""
    red, green, blue = image.split()
    return Image.merge("RGB", (blue, green, red))


def names_colour_and_background(text: str, scene: Scene) -> bool:
    """Whether ``text`` names the scene's shape colour and its background colour, and no other
    shape colour."""
    words = text.lower().replace(",", " ").split()
    colours = {word for word in words if word in COLOURS}
    return colours == {scene.colour} and f"{scene.background} background" in " ".join(words)


def names_shape(text: str, scene: Scene) -> bool:
    """Whether ``text`` names the scene's shape."""
    return scene.shape in text.lower().split()


def nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    """The palette name nearest to ``rgb``."""
    return min(palette, key=lambda name: float(np.sum((np.array(palette[name]) - rgb) ** 2)))


def read_generated(image: Image.Image) -> tuple[str, str | None]:
    """(background colour, object colour) of a generated image: the background is the world
    background nearest to the border's median pixel; the object colour is the world colour
    nearest to the median of the pixels far from that background (None when there are few)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = nearest(np.median(border, axis=0), BACKGROUNDS)
    distance = np.linalg.norm(pixels - np.array(BACKGROUNDS[background]), axis=-1)
    foreground = pixels[distance > 80]
    if len(foreground) < 0.03 * distance.size:
        return background, None
    return background, nearest(np.median(foreground, axis=0), COLOURS)


def share(flags: list[bool]) -> float:
    """The share of true values."""
    return sum(flags) / len(flags)


def record(what: str, figure: float, threshold: float | None = None, count: int = 0) -> None:
    """Keep a figure for the session summary."""
    bar = f" (needs >= {threshold:.0%})" if threshold is not None else " (reported)"
    of = f" of {count}" if count else ""
    FIGURES.append(f"{what}: {figure:.1%}{of}{bar}")


def uploadable(images: list[HeldOut]) -> list[HeldOut]:
    """``images`` with the WebP ones re-encoded as PNG: /upload takes JPEG and PNG."""
    kept = []
    for image in images:
        if image.media_type == "image/webp":
            buffer = io.BytesIO()
            Image.open(io.BytesIO(image.data)).save(buffer, format="PNG")
            name = image.filename.rsplit(".", 1)[0] + ".png"
            image = HeldOut(image.scene, buffer.getvalue(), "image/png", name)
        kept.append(image)
    return kept
