"""Models a profile names itself: validated names and tasks, registry entries whose
capabilities come from the checkpoint, and refusals (no chat template, an architecture that
reads no images) when the profile is built, before any replica starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from graphs.registry import catalog, served_entries
from tests.support.common import REPO_ROOT
from vlgraph.config import AppConfig, ChatModelConfig
from vlgraph.errors import ModelUnavailableError, UnsupportedModelError
from vlgraph.served_models import Capability, ChatMode, chat_mode


def profile(cache: Path, **named: dict) -> AppConfig:
    """A profile of BLIP alone and the ``named`` models."""
    return AppConfig.model_validate(
        {
            "checkpoint_cache_dir": str(cache),
            "models": {"blip2": None, "gemma": None, "intern_vlm": None, **named},
            **dict.fromkeys(("vqa", "clip_image", "clip_text", "sd", "sdxl")),
        }
    )


def test_named_models_are_validated_as_chat_models() -> None:
    config = AppConfig.model_validate(
        {"models": {"qwen": {"task": "chat", "source": "Qwen/Qwen2.5-VL-3B-Instruct"}}}
    )
    (named,) = config.models.named().values()
    assert isinstance(named, ChatModelConfig) and named.family == "auto"
    assert "qwen" in config.served_models() and "qwen" in config.called_deployments()


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ({"Qwen": {"task": "chat", "source": "x"}}, "lowercase letters"),
        ({"sdxl": {"task": "chat", "source": "x"}}, "built-in section"),
        ({"similar_image": {"task": "chat", "source": "x"}}, "built-in section"),
        ({"qwen": {"source": "x"}}, r"models\.qwen: .* needs a task, one of chat, caption, embed"),
        ({"qwen": {"task": "dance", "source": "x"}}, r"needs a task.*\(got 'dance'\)"),
        ({"qwen": {"task": "chat", "source": "x", "colour": 1}}, r"models\.qwen\.chat\.colour"),
        ({"qwen": {"task": "embed", "source": "x", "family": "gemma3"}}, r"qwen\.embed\.family"),
    ],
)
def test_a_bad_named_model_fails_with_its_name(models: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AppConfig.model_validate({"models": models})


def test_a_named_model_gets_the_capabilities_of_its_checkpoint(checkpoint_cache: Path) -> None:
    config = profile(
        checkpoint_cache,
        mine={"task": "chat", "source": "tiny:internvl", "label": "Mine"},
        single={"task": "caption", "source": "tiny:gemma3", "multi_image": False},
    )
    served = served_entries(config)
    entries = {entry.name: entry for entry, _ in served}
    assert list(entries) == ["blip", "mine", "single"]
    mine, single = entries["mine"], entries["single"]
    assert (mine.label, mine.deployment_name, mine.section) == ("Mine", "mine_chat", "models.mine")
    assert chat_mode(mine.capabilities) is ChatMode.CONVERSATION
    assert single.capabilities == {Capability.CAPTION}
    assert chat_mode(single.capabilities) is ChatMode.CAPTION
    assert single.deployment_name == "single_caption"
    models = catalog(served)
    assert models.names(Capability.CHAT) == ("mine",)
    assert models.names(Capability.CAPTION) == ("blip", "mine", "single")
    assert models.known_names(Capability.COLLECTIVE)[-1] == "mine"


def test_a_named_embedding_model_embeds_what_its_checkpoint_embeds(
    checkpoint_cache: Path,
) -> None:
    config = profile(
        checkpoint_cache,
        sig={"task": "embed", "source": "tiny:siglip"},
        words={"task": "embed", "source": "tiny:clip-multilingual", "label": "Words"},
        declared={"task": "embed", "source": "someone/elsewhere", "modalities": ["image"]},
    )
    entries = {entry.name: entry for entry, _ in served_entries(config)}
    assert entries["sig"].capabilities == {Capability.EMBED_IMAGE, Capability.EMBED_TEXT}
    assert entries["words"].capabilities == {Capability.EMBED_TEXT}
    assert entries["declared"].capabilities == {Capability.EMBED_IMAGE}
    assert (entries["sig"].deployment_name, entries["words"].label) == ("sig_embed", "Words")
    chat = profile(checkpoint_cache, vlm={"task": "embed", "source": "tiny:gemma3"})
    with pytest.raises(UnsupportedModelError, match="not an image-text dual encoder"):
        served_entries(chat)


def test_a_checkpoint_no_family_serves_is_refused_when_the_profile_is_built(
    checkpoint_cache: Path,
) -> None:
    config = profile(checkpoint_cache, captioner={"task": "chat", "source": "tiny:blip-caption"})
    with pytest.raises(UnsupportedModelError, match="no chat template, so it cannot chat"):
        served_entries(config)
    captioner = profile(
        checkpoint_cache, captioner={"task": "caption", "source": "tiny:blip-caption"}
    )
    (_, (entry, _)) = served_entries(captioner)
    assert entry.capabilities == {Capability.CAPTION}


def test_a_checkpoint_that_cannot_be_read_says_how_to_build_without_it(tmp_path: Path) -> None:
    config = profile(tmp_path, remote={"task": "chat", "source": "someone/not-in-the-cache"})
    with pytest.raises(ModelUnavailableError, match=r"set models\.remote\.multi_image"):
        served_entries(config)
    declared = profile(
        tmp_path,
        remote={"task": "chat", "source": "someone/not-in-the-cache", "multi_image": True},
    )
    entries = {entry.name: entry for entry, _ in served_entries(declared)}
    assert Capability.COLLECTIVE in entries["remote"].capabilities


def commented_gpu_examples() -> dict:
    """The named models ``serve_config.yaml`` shows commented out, uncommented."""
    lines = (REPO_ROOT / "serve_config.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("# qwen:"))
    block = []
    for line in lines[start:]:
        stripped = line.lstrip()
        if not stripped.startswith("# ") or stripped.startswith("# Visual"):
            break
        block.append(" " * (len(line) - len(stripped)) + stripped[2:])
    return yaml.safe_load("\n".join(block))


def test_the_gpu_profiles_commented_examples_are_valid_named_models() -> None:
    examples = commented_gpu_examples()
    assert list(examples) == ["qwen", "smolvlm", "sd35"]
    (application,) = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())["applications"]
    args = application["args"]
    args["models"] |= examples
    config = AppConfig.model_validate(args)
    for name, model in config.models.named().items():
        assert model.task in ("chat", "generate") and model.device == "cuda", name
        assert 0 < model.deployment.ray_actor_options.num_gpus <= 0.25, name
        assert "/" in model.source, "a real Hub id"
