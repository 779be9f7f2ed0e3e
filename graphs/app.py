"""The full vlgraph application: every model deployment bound behind one ingress.

``serve run configs/offline.yaml`` and ``serve deploy serve_config.yaml`` point their
``import_path`` at :func:`build_app`. Ray Serve validates the file's ``args:`` block through the
:class:`~vlgraph.config.AppConfig` annotation before calling it, so a bad field fails with its
dotted name before any replica starts; the builder then checks that every model's weights can
be found (unless ``check_models_before_start`` is off).
"""

from __future__ import annotations

from ray.serve import Application

from deployments.blip_caption import BlipCaptionDeployment
from deployments.blip_vqa import BlipVqaDeployment
from deployments.clip_encoder import ClipImageDeployment, ClipTextDeployment
from deployments.diffusion import DiffusionDeployment
from deployments.ingress import IngressDeployment
from deployments.vlm_caption import VisionLanguageDeployment
from graphs.similar_image import bind_similar_image
from vlgraph.config import AppConfig
from vlgraph.model_source import check_model_available

#: Model settings that never change an answer (batches are exact), left out of cache keys.
RESULT_NEUTRAL_FIELDS = {"deployment", "batching", "torch_threads", "tune_cpu_allocator"}


def build_app(args: AppConfig) -> Application:
    """Bind the model deployments and the ingress from a validated configuration."""
    config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args)
    cache_dir = config.resolved_cache_dir()
    if config.check_models_before_start:
        for name, model in config.served_models().items():
            check_model_available(name, model.source, cache_dir, model.revision)

    blip = config.models.blip
    captioners = {
        "blip": BlipCaptionDeployment.options(**blip.serve_options()).bind(
            blip, str(cache_dir), "blip"
        )
    }
    for name, model in config.models.served().items():
        if name != "blip":
            options = {"name": f"{name}_caption", **model.serve_options()}
            captioners[name] = VisionLanguageDeployment.options(**options).bind(
                model, str(cache_dir), name
            )

    vqa = None
    if config.vqa is not None:
        vqa = BlipVqaDeployment.options(**config.vqa.serve_options()).bind(
            config.vqa, str(cache_dir), "vqa"
        )

    encoders = {}
    for name, deployment, modality in (
        ("clip_image", ClipImageDeployment, "image"),
        ("clip_text", ClipTextDeployment, "text"),
    ):
        model = getattr(config, name)
        if model is not None:
            encoders[name] = deployment.options(**model.serve_options()).bind(
                model, str(cache_dir), name, modality
            )

    generators, generator_configs = {}, {}
    for name in ("sd", "sdxl"):
        model = getattr(config, name)
        if model is not None:
            options = {"name": f"{name}_generator", **model.serve_options()}
            generators[name] = DiffusionDeployment.options(**options).bind(
                model, str(cache_dir), name
            )
            generator_configs[name] = model
    # Document 004's pipeline chains BLIP into SDXL (Stable Diffusion when SDXL is off).
    pipeline = None
    chained = "sdxl" if "sdxl" in generators else "sd" if "sd" in generators else None
    if chained is not None:
        pipeline = bind_similar_image(
            captioners["blip"],
            generators[chained],
            blip,
            generator_configs[chained],
            config.ingress,
            config.similar_image,
        )

    # Paths are resolved here, in the process that reads the config file, so that a relative
    # image root means the same folder for every replica.
    ingress_config = config.ingress.model_copy(
        update={"image_root": config.ingress.resolved_image_root()}
    )
    store_config = config.store.model_copy(update={"data_dir": config.store.resolved_data_dir()})
    called = config.called_deployments()
    deployments = (ingress_config.deployment, *called.values())
    return IngressDeployment.options(**ingress_config.deployment.serve_options()).bind(
        captioners=captioners,
        config=ingress_config,
        profile=config.profile,
        cache_config=config.cache,
        admin=config.admin,
        model_fingerprints={
            name: model.model_dump(mode="json", exclude=RESULT_NEUTRAL_FIELDS)
            for name, model in config.served_models().items()
        },
        vqa=vqa,
        store_config=store_config,
        encoders=encoders,
        fetch_config=config.image_fetch,
        generators=generators,
        generator_configs=generator_configs,
        pipeline=pipeline,
        random_weights=bool(config.random_weight_models()),
        overload_statuses=tuple(
            sorted({options.backpressure_config.status_code for options in deployments})
        ),
        timeouts={name: options.request_timeout_s for name, options in called.items()},
    )
