"""The semantic checks catch a broken image path: channel-swapped images (an RGB/BGR mix-up)
sent through the served path, and a captioner whose processor normalises wrongly, both fall
below the thresholds the real path meets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from deployments.blip_caption import BlipCaptioner
from tests.semantic.test_caption_meaning import COLOUR_AND_BACKGROUND, caption_alone
from tests.semantic.test_embedding_meaning import TOP_1, best_images, embeddings
from tests.support.common import RunningApp
from tests.support.world_checks import held_out, names_colour_and_background, share, swap_channels
from vlgraph.config import BlipCaptionConfig
from vlgraph.messages import CaptionRequest
from vlgraph.tiny import ensure_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.semantic]

SWAPPED = held_out(24, offset=10, transform=swap_channels)


def caption_accuracy(captions: list[str], images) -> float:
    return share(
        [names_colour_and_background(c, i.scene) for c, i in zip(captions, images, strict=True)]
    )


def test_swapped_channels_fail_the_caption_check(app: RunningApp) -> None:
    captions = [caption_alone(app, "blip", image)["caption"] for image in SWAPPED]
    assert caption_accuracy(captions, SWAPPED) < COLOUR_AND_BACKGROUND["blip"]


def test_swapped_channels_fail_the_embedding_check(app: RunningApp) -> None:
    import base64

    import tests.semantic.test_embedding_meaning as meaning

    swapped = held_out(24, offset=30, distinct=True, transform=swap_channels)
    vectors = embeddings(
        app, "/encode_image", "image_b64", [base64.b64encode(i.data).decode() for i in swapped]
    )
    assert [i.scene for i in swapped] == [i.scene for i in meaning.IMAGES]
    found = best_images(app, vectors, "en")
    assert share([best == index for index, best in enumerate(found)]) < TOP_1


def test_a_wrongly_normalising_processor_fails_the_caption_check(
    checkpoint_cache: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "blip-without-normalisation"
    shutil.copytree(ensure_checkpoint("blip-caption", checkpoint_cache), broken)
    settings_file = broken / "processor_config.json"
    settings = json.loads(settings_file.read_text())
    assert settings["image_processor"]["do_normalize"] is True
    settings["image_processor"]["do_normalize"] = False
    settings_file.write_text(json.dumps(settings))
    images = held_out(24, offset=10)
    config = BlipCaptionConfig(source=str(broken), device="cpu", generation={"max_new_tokens": 12})
    captioner = BlipCaptioner.in_process(config, str(checkpoint_cache))
    results = captioner.caption_now([CaptionRequest(image=image.data) for image in images])
    assert (
        caption_accuracy([r.caption or "" for r in results], images) < COLOUR_AND_BACKGROUND["blip"]
    )
