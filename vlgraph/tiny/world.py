"""The small world that the offline checkpoints learn: one coloured shape on a plain background.

Every image holds one shape from :data:`SHAPES` in one colour from :data:`COLOURS` on a plain
background from :data:`BACKGROUNDS`, at a random position and size, with mild JPEG noise.
Captions read ``a red circle on a white background``; questions are those of
:data:`QUESTION_TEMPLATES`; the same captions exist in German, French and Spanish for the
multilingual text encoder. docs/offline-world.md shows examples.

Everything is drawn from an explicit ``random.Random``, so a seed fixes a data set: the factory
trains on seeds below :data:`HELD_OUT_SEED`, the semantic tests draw their images from it and
above.
"""

from __future__ import annotations

import io
import itertools
import math
import random
from dataclasses import dataclass

SHAPES = ("circle", "square", "triangle", "star")
#: Shape colours and the RGB they are drawn in.
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (40, 70, 220),
    "yellow": (240, 215, 30),
    "purple": (135, 45, 175),
    "orange": (245, 135, 20),
}
#: Background colours and their RGB.
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
#: Languages of the multilingual captions, besides English.
LANGUAGES = ("en", "de", "fr", "es")
#: Seeds from here up are never used for training: the tests' held-out images come from them.
HELD_OUT_SEED = 1_000_000

QUESTION_TEMPLATES = (
    "what color is the {shape}?",
    "what shape is in the picture?",
    "what color is the background?",
    "is there a {shape}?",
)


@dataclass(frozen=True)
class Scene:
    """What one image shows: a ``colour`` ``shape`` on a ``background`` background."""

    shape: str
    colour: str
    background: str

    @property
    def caption(self) -> str:
        """The English caption, e.g. ``a red circle on a white background``."""
        return f"{_a(self.colour)} {self.shape} on a {self.background} background"

    def caption_in(self, language: str) -> str:
        """The caption in ``language`` (one of :data:`LANGUAGES`)."""
        return _CAPTIONS[language](self)

    def questions(self, rng: random.Random) -> list[tuple[str, str]]:
        """One of each question with its answer; the yes/no question asks about this scene's
        shape or about another one, half the time each."""
        asked = self.shape if rng.random() < 0.5 else rng.choice(_others(SHAPES, self.shape))
        return [
            (f"what color is the {self.shape}?", self.colour),
            ("what shape is in the picture?", self.shape),
            ("what color is the background?", self.background),
            (f"is there a {asked}?", "yes" if asked == self.shape else "no"),
        ]


def all_scenes() -> list[Scene]:
    """The 72 scenes of the world, in a fixed order."""
    return [
        Scene(shape, colour, background)
        for shape, colour, background in itertools.product(SHAPES, COLOURS, BACKGROUNDS)
    ]


def random_scene(rng: random.Random) -> Scene:
    """A scene drawn uniformly."""
    return Scene(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(BACKGROUNDS)))


def collective_caption(scenes: list[Scene]) -> str:
    """The caption of a set of images: ``a red circle and a blue square``."""
    return " and ".join(f"{_a(scene.colour)} {scene.shape}" for scene in scenes)


def _a(word: str) -> str:
    """``word`` after its indefinite article: ``a red``, ``an orange``."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def draw(scene: Scene, rng: random.Random, size: int = 64, jpeg: bool = True):
    """Draw ``scene`` as a ``size`` x ``size`` RGB PIL image: the shape at a random place and
    scale (half to four fifths of the side), round-tripped through JPEG at a random
    quality unless ``jpeg`` is false."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    side = rng.uniform(0.5, 0.8) * size
    left = rng.uniform(0.05 * size, 0.95 * size - side)
    top = rng.uniform(0.05 * size, 0.95 * size - side)
    fill = COLOURS[scene.colour]
    canvas = ImageDraw.Draw(image)
    box = (left, top, left + side, top + side)
    if scene.shape == "circle":
        canvas.ellipse(box, fill=fill)
    elif scene.shape == "square":
        canvas.rectangle(box, fill=fill)
    elif scene.shape == "triangle":
        apex = (left + side / 2, top)
        canvas.polygon([apex, (left, top + side), (left + side, top + side)], fill=fill)
    else:
        canvas.polygon(_star(left + side / 2, top + side / 2, side / 2), fill=fill)
    if not jpeg:
        return image
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=rng.randint(70, 95))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _star(x: float, y: float, radius: float) -> list[tuple[float, float]]:
    """A five-pointed star around (x, y), pointing up."""
    points = []
    for index in range(10):
        r = radius if index % 2 == 0 else radius * 0.45
        angle = -math.pi / 2 + index * math.pi / 5
        points.append((x + r * math.cos(angle), y + r * math.sin(angle)))
    return points


def _others(values: tuple[str, ...], value: str) -> list[str]:
    return [other for other in values if other != value]


# Multilingual captions. German inflects the adjective by the noun's gender (and "lila" and
# "orange" do not inflect); French and Spanish put it after the noun and agree in gender.
_DE_SHAPES = {"circle": ("Kreis", "m"), "square": ("Quadrat", "n"), "triangle": ("Dreieck", "n")}
_DE_SHAPES["star"] = ("Stern", "m")
_DE_COLOURS = {
    "red": "rot",
    "green": "grün",
    "blue": "blau",
    "yellow": "gelb",
    "purple": "lila",
    "orange": "orange",
}
_DE_BACKGROUNDS = {"white": "weißem", "black": "schwarzem", "gray": "grauem"}
_FR_SHAPES = {"circle": ("cercle", "m"), "square": ("carré", "m"), "triangle": ("triangle", "m")}
_FR_SHAPES["star"] = ("étoile", "f")
_FR_COLOURS = {
    "red": ("rouge", "rouge"),
    "green": ("vert", "verte"),
    "blue": ("bleu", "bleue"),
    "yellow": ("jaune", "jaune"),
    "purple": ("violet", "violette"),
    "orange": ("orange", "orange"),
}
_FR_BACKGROUNDS = {"white": "blanc", "black": "noir", "gray": "gris"}
_ES_SHAPES = {"circle": ("círculo", "m"), "square": ("cuadrado", "m")}
_ES_SHAPES |= {"triangle": ("triángulo", "m"), "star": ("estrella", "f")}
_ES_COLOURS = {
    "red": ("rojo", "roja"),
    "green": ("verde", "verde"),
    "blue": ("azul", "azul"),
    "yellow": ("amarillo", "amarilla"),
    "purple": ("morado", "morada"),
    "orange": ("naranja", "naranja"),
}
_ES_BACKGROUNDS = {"white": "blanco", "black": "negro", "gray": "gris"}


def _german(scene: Scene) -> str:
    noun, gender = _DE_SHAPES[scene.shape]
    adjective = _DE_COLOURS[scene.colour]
    if scene.colour not in {"purple", "orange"}:
        adjective += "er" if gender == "m" else "es"
    return f"ein {adjective} {noun} auf {_DE_BACKGROUNDS[scene.background]} Hintergrund"


def _french(scene: Scene) -> str:
    noun, gender = _FR_SHAPES[scene.shape]
    adjective = _FR_COLOURS[scene.colour][gender == "f"]
    article = "une" if gender == "f" else "un"
    return f"{article} {noun} {adjective} sur fond {_FR_BACKGROUNDS[scene.background]}"


def _spanish(scene: Scene) -> str:
    noun, gender = _ES_SHAPES[scene.shape]
    adjective = _ES_COLOURS[scene.colour][gender == "f"]
    article = "una" if gender == "f" else "un"
    return f"{article} {noun} {adjective} sobre fondo {_ES_BACKGROUNDS[scene.background]}"


_CAPTIONS = {
    "en": lambda scene: scene.caption,
    "de": _german,
    "fr": _french,
    "es": _spanish,
}


def world_questions() -> list[str]:
    """Every question of the world, e.g. ``what color is the circle?``."""
    return list(
        dict.fromkeys(
            template.format(shape=shape) for template in QUESTION_TEMPLATES for shape in SHAPES
        )
    )


def world_words() -> list[str]:
    """Every word of the world's captions and questions in all languages, in a fixed order:
    what the offline tokenizers' vocabularies start with."""
    texts = [scene.caption_in(language) for scene in all_scenes() for language in LANGUAGES]
    texts += world_questions()
    texts += ["yes no and answer"]
    words = []
    for text in texts:
        words += text.replace("?", " ?").split()
    return list(dict.fromkeys(words))
