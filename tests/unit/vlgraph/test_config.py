"""Config validation: every profile is valid, and a bad field fails with its dotted name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from graphs.app import build_app
from tests.support.common import REPO_ROOT
from vlgraph.config import AppConfig, DeploymentOptions

PROFILES = ["configs/offline.yaml", "configs/local.yaml", "serve_config.yaml"]


def profile_args(path: str) -> dict:
    document = yaml.safe_load((REPO_ROOT / path).read_text())
    (application,) = document["applications"]
    assert application["import_path"] == "graphs.app:build_app"
    return application["args"]


@pytest.mark.parametrize("path", PROFILES)
def test_every_profile_validates(path: str) -> None:
    config = AppConfig.model_validate(profile_args(path))
    blip = config.models.blip
    assert blip.deployment.max_ongoing_requests >= blip.batching.max_batch_size


def test_profiles_differ_where_they_should() -> None:
    offline = AppConfig.model_validate(profile_args("configs/offline.yaml"))
    local = AppConfig.model_validate(profile_args("configs/local.yaml"))
    gpu = AppConfig.model_validate(profile_args("serve_config.yaml"))
    assert offline.models.blip.source.startswith("tiny:")
    assert (
        local.models.blip.source
        == gpu.models.blip.source
        == ("Salesforce/blip-image-captioning-base")
    )
    assert local.models.blip.device == "cpu"
    assert 0 < gpu.models.blip.deployment.ray_actor_options.num_gpus < 1
    assert gpu.models.blip.deployment.autoscaling_config is not None


def with_change(dotted: str, value) -> dict:
    args = profile_args("configs/offline.yaml")
    node = args
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return args


@pytest.mark.parametrize(
    ("dotted", "value", "named"),
    [
        ("models.blip.batching.max_batch_size", 0, "models.blip.batching.max_batch_size"),
        ("models.blip.batching.max_batch_sise", 4, "models.blip.batching.max_batch_sise"),
        ("models.blip.dtype", "float8", "models.blip.dtype"),
        ("models.blip.deployment.ray_actor_options.num_gpus", -1, "num_gpus"),
        ("models.blip.generation.max_new_tokens", 0, "models.blip.generation.max_new_tokens"),
        ("ingress.max_image_bytes", "lots", "ingress.max_image_bytes"),
        ("ingress.allowed_formats", ["JPEG", "PSD"], "ingress.allowed_formats"),
        ("models.clip_typo", {}, "models.clip_typo"),
    ],
)
def test_bad_field_fails_with_its_name(dotted: str, value, named: str) -> None:
    with pytest.raises(ValidationError) as raised:
        AppConfig.model_validate(with_change(dotted, value))
    assert named in str(raised.value)


def test_max_ongoing_requests_must_hold_a_batch() -> None:
    args = with_change("models.blip.deployment.max_ongoing_requests", 4)
    with pytest.raises(ValidationError) as raised:
        AppConfig.model_validate(args)
    message = str(raised.value)
    assert "max_ongoing_requests (4)" in message and "max_batch_size (8)" in message


def test_replica_count_and_autoscaling_are_exclusive() -> None:
    with pytest.raises(ValidationError, match="either num_replicas or autoscaling_config"):
        DeploymentOptions.model_validate(
            {"num_replicas": 2, "autoscaling_config": {"min_replicas": 0, "max_replicas": 2}}
        )
    autoscaled = DeploymentOptions.model_validate(
        {"autoscaling_config": {"min_replicas": 0, "max_replicas": 2}}
    )
    assert "num_replicas" not in autoscaled.serve_options()
    with pytest.raises(ValidationError, match="min_replicas must not exceed max_replicas"):
        DeploymentOptions.model_validate(
            {"autoscaling_config": {"min_replicas": 3, "max_replicas": 2}}
        )


def test_serve_validates_builder_args_through_the_annotation() -> None:
    """Ray Serve's own builder call (used by serve run/deploy) applies AppConfig."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    with pytest.raises(ValidationError) as raised:
        call_user_app_builder_with_args_if_necessary(
            build_app, with_change("models.blip.batching.batch_wait_timeout_s", -1)
        )
    assert "models.blip.batching.batch_wait_timeout_s" in str(raised.value)


def test_image_root_comes_from_config_then_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMAGE_ROOT", str(tmp_path / "from_env"))
    assert AppConfig().ingress.resolved_image_root() == tmp_path / "from_env"
    configured = AppConfig.model_validate({"ingress": {"image_root": str(tmp_path / "cfg")}})
    assert configured.ingress.resolved_image_root() == tmp_path / "cfg"
    monkeypatch.delenv("IMAGE_ROOT")
    assert AppConfig().ingress.resolved_image_root() == Path("images").resolve()


def test_serve_options_carry_user_config_and_resources() -> None:
    args = profile_args("serve_config.yaml")
    blip = AppConfig.model_validate(args).models.blip
    options = blip.deployment.serve_options(blip.user_config())
    assert options["user_config"] == {"batching": blip.batching.model_dump()}
    assert options["ray_actor_options"]["num_gpus"] == blip.deployment.ray_actor_options.num_gpus
    assert options["max_queued_requests"] == blip.deployment.max_queued_requests


def test_model_replicas_get_allocator_settings_unless_turned_off() -> None:
    from vlgraph.cpu_allocator import CPU_ALLOCATOR_ENV

    blip = AppConfig.model_validate(profile_args("configs/offline.yaml")).models.blip
    env = blip.serve_options()["ray_actor_options"]["runtime_env"]["env_vars"]
    assert env == CPU_ALLOCATOR_ENV
    custom = AppConfig.model_validate(
        with_change(
            "models.blip.deployment.ray_actor_options.runtime_env",
            {"env_vars": {"MALLOC_ARENA_MAX": "2", "X": "1"}},
        )
    ).models.blip
    merged = custom.serve_options()["ray_actor_options"]["runtime_env"]["env_vars"]
    assert merged["MALLOC_ARENA_MAX"] == "2" and merged["X"] == "1"
    off = blip.model_copy(update={"tune_cpu_allocator": False})
    assert not off.serve_options()["ray_actor_options"].get("runtime_env")


@pytest.mark.parametrize("path", PROFILES)
def test_every_profile_is_a_valid_serve_config_file(path: str) -> None:
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(yaml.safe_load((REPO_ROOT / path).read_text()))


def test_original_environment_variables_are_read_and_validated(monkeypatch) -> None:
    for name in ("ENV", "DEBUG", "API_KEY", "REDIS_HOST", "CACHE_TTL_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    config = AppConfig()
    assert (config.environment, config.admin.debug, config.admin.api_key) == (
        "development",
        False,
        None,
    )
    monkeypatch.setenv("ENV", "production")
    monkeypatch.setenv("API_KEY", "s3cret")
    monkeypatch.setenv("CACHE_TTL_SECONDS", "60")
    config = AppConfig()
    assert config.environment == "production" and config.cache.ttl_s == 60
    assert config.admin.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config)
    monkeypatch.setenv("DEBUG", "true")
    with pytest.raises(ValidationError, match="ENV=production"):
        AppConfig()
    monkeypatch.setenv("ENV", "staging")
    with pytest.raises(ValidationError, match="environment"):
        AppConfig()
    monkeypatch.setenv("ENV", "development")
    monkeypatch.setenv("CACHE_TTL_SECONDS", "soon")
    with pytest.raises(ValueError, match="CACHE_TTL_SECONDS must be an integer"):
        AppConfig()


def test_the_store_defaults_and_its_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VLGRAPH_STORE", raising=False)
    monkeypatch.setenv("VLGRAPH_DATA_DIR", str(tmp_path / "kept"))
    config = AppConfig()
    assert config.store.backend == "sqlite"
    assert config.store.resolved_data_dir() == tmp_path / "kept"
    assert config.vqa is not None and config.vqa.source == "Salesforce/blip-vqa-base"
    assert "vqa" in config.served_models()
    monkeypatch.setenv("VLGRAPH_STORE", "redis")
    assert AppConfig().store.backend == "redis"
    monkeypatch.setenv("VLGRAPH_STORE", "mongo")
    with pytest.raises(ValueError, match="VLGRAPH_STORE must be one of sqlite, redis"):
        AppConfig()


def test_the_store_may_not_share_the_cache_namespace() -> None:
    with pytest.raises(ValidationError, match="a cache reset removes"):
        AppConfig(store={"namespace": "vlgraph"})
    assert "vqa" not in AppConfig(vqa=None).served_models()


def test_the_gpu_profile_packs_onto_one_gpu() -> None:
    """Every model's minimum replicas fit one GPU, and so does one replica of every model
    (what bench/gpu_figures.py serves): fractions sum to at most 1."""
    document = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    config = AppConfig.model_validate(document["applications"][0]["args"])
    total = one_of_each = 0.0
    for model in config.served_models().values():
        options = model.deployment
        replicas = (
            options.autoscaling_config.min_replicas
            if options.autoscaling_config is not None
            else options.num_replicas
        )
        assert options.ray_actor_options.num_gpus > 0, "every model runs on the GPU"
        total += replicas * options.ray_actor_options.num_gpus
        one_of_each += options.ray_actor_options.num_gpus
    assert total <= 1.0
    assert one_of_each <= 1.0


def test_the_offline_profile_fits_two_cores() -> None:
    """``serve run configs/offline.yaml`` on a 2-core machine: every replica's CPU share fits
    (Ray schedules by these numbers; one that does not fit never starts)."""
    document = yaml.safe_load((REPO_ROOT / "configs/offline.yaml").read_text())
    config = AppConfig.model_validate(document["applications"][0]["args"])
    deployments = [*config.called_deployments().values(), config.ingress.deployment]
    total = sum(
        (options.num_replicas or options.autoscaling_config.initial_replicas or 0)
        * options.ray_actor_options.num_cpus
        for options in deployments
    )
    assert total <= 1.75, f"{total} CPUs asked; keep room for Serve's proxy and controller"


def test_only_untrained_tiny_sources_count_as_random_weights() -> None:
    """The web page's offline notice names the random models: in the offline profile SDXL and
    the architectures served to prove the generic path (every other tiny checkpoint is
    trained on the world); none for real Hub ids."""
    offline = AppConfig.model_validate(profile_args("configs/offline.yaml"))
    random = ["qwen", "llava_ov", "paligemma", "siglip", "sd3", "pixart", "sdxl"]
    assert offline.random_weight_models() == random
    for real in ("configs/local.yaml", "serve_config.yaml"):
        assert AppConfig.model_validate(profile_args(real)).random_weight_models() == []
    mixed = profile_args("configs/local.yaml")
    mixed["models"]["blip"]["source"] = "tiny:blip-caption"
    assert AppConfig.model_validate(mixed).random_weight_models() == []
    mixed["models"]["git"] = {"source": "tiny:git"}
    assert AppConfig.model_validate(mixed).random_weight_models() == ["git"]


@pytest.mark.parametrize("path", PROFILES)
def test_every_deployment_has_a_bounded_queue_and_a_request_timeout(path: str) -> None:
    """Overload is shed, never queued without end, and no call waits forever: each deployment
    of each profile sets both, Serve receives the queue bound, and Serve's own proxy waits
    longer than the ingress so that the ingress's answer (503 with Retry-After) comes first."""
    document = yaml.safe_load((REPO_ROOT / path).read_text())
    config = AppConfig.model_validate(document["applications"][0]["args"])
    deployments = {"ingress": config.ingress.deployment, **config.called_deployments()}
    assert "similar_image" in deployments
    ingress_timeout = config.ingress.deployment.request_timeout_s
    for name, options in deployments.items():
        assert 1 <= options.max_queued_requests <= 4096, name
        assert 0 < options.request_timeout_s <= ingress_timeout, name
        serve_options = options.serve_options()
        assert serve_options["max_queued_requests"] == options.max_queued_requests, name
        assert "request_timeout_s" not in serve_options, "enforced by vlgraph, not a Serve option"
    assert document["http_options"]["request_timeout_s"] > ingress_timeout


def test_an_unbounded_queue_is_refused() -> None:
    with pytest.raises(ValidationError, match="max_queued_requests"):
        AppConfig.model_validate(with_change("models.blip.deployment.max_queued_requests", -1))


def test_a_model_may_not_outwait_the_ingress() -> None:
    args = with_change("models.blip.deployment.request_timeout_s", 500)
    with pytest.raises(ValidationError, match=r"blip's deployment\.request_timeout_s"):
        AppConfig.model_validate(args)


def test_the_body_limit_holds_the_largest_upload_and_cors_takes_origins_only() -> None:
    ingress = AppConfig().ingress
    assert ingress.body_limit() > ingress.max_upload_images * ingress.max_image_bytes
    with pytest.raises(ValidationError, match="max_body_bytes"):
        AppConfig.model_validate({"ingress": {"max_body_bytes": 1000, "max_image_bytes": 1000}})
    for origin in ("*", "evil.example", "ftp://x"):
        with pytest.raises(ValidationError, match="cors_allow_origins"):
            AppConfig.model_validate({"ingress": {"cors_allow_origins": [origin]}})
