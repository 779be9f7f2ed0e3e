"""The full vlgraph application: every served model of the registry bound behind one ingress.

``serve run configs/offline.yaml`` and ``serve deploy serve_config.yaml`` point their
``import_path`` at :func:`build_app`. Ray Serve validates the file's ``args:`` block through the
:class:`~vlgraph.config.AppConfig` annotation before calling it, so a bad field fails with its
dotted name before any replica starts; the builder then checks that every model's weights can
be found (unless ``check_models_before_start`` is off).
"""

from __future__ import annotations

from ray.serve import Application

from deployments.ingress.gateway import PIPELINE
from deployments.ingress.settings import IngressSettings
from graphs.ingress import access_rules, bind_ingress, rate_limit_redis
from graphs.registry import catalog, served_entries
from graphs.similar_image import bind_similar_image
from vlgraph.config import AppConfig, DiffusionConfig
from vlgraph.model_source import check_model_available
from vlgraph.served_models import pipeline_generator

#: Model settings that never change an answer (batches are exact), left out of cache keys.
RESULT_NEUTRAL_FIELDS = {"deployment", "batching", "torch_threads", "tune_cpu_allocator"}


def build_app(args: AppConfig) -> Application:
    """Bind the served models' deployments, the pipeline and the ingress from a validated
    configuration."""
    config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args)
    access = access_rules(config.access, config.admin.api_key)
    cache_dir = config.resolved_cache_dir()
    served = served_entries(config)
    if config.check_models_before_start:
        for entry, model in served:
            check_model_available(entry.name, model.source, cache_dir, model.revision)
    handles = {entry.name: entry.bind(model, str(cache_dir)) for entry, model in served}
    models = {entry.name: model for entry, model in served}
    generators = {
        name: model for name, model in models.items() if isinstance(model, DiffusionConfig)
    }
    # The similar-image pipeline chains BLIP into SDXL (Stable Diffusion when SDXL is off).
    chained = pipeline_generator(generators)
    if chained is not None and "blip" in handles:
        handles[PIPELINE] = bind_similar_image(
            handles["blip"],
            handles[chained],
            models["blip"],
            generators[chained],
            config.ingress,
            config.similar_image,
        )

    called = config.called_deployments()
    deployments = (config.ingress.deployment, *called.values())
    settings = IngressSettings(
        profile=config.profile,
        # Paths are resolved here, in the process that reads the config file, so that a
        # relative folder means the same one for every replica.
        config=config.ingress.model_copy(
            update={"image_root": config.ingress.resolved_image_root()}
        ),
        catalog=catalog(served),
        cache=config.cache,
        admin=config.admin,
        store=config.store.model_copy(update={"data_dir": config.store.resolved_data_dir()}),
        image_fetch=config.image_fetch,
        generators=generators,
        fingerprints={
            name: model.model_dump(mode="json", exclude=RESULT_NEUTRAL_FIELDS)
            for name, model in models.items()
        },
        timeouts={name: options.request_timeout_s for name, options in called.items()},
        overload_statuses=tuple(
            sorted({options.backpressure_config.status_code for options in deployments})
        ),
        rate_limit_redis=rate_limit_redis(config.cache),
        search=(
            config.search.model_copy(update={"engine": config.search_engine()})
            if config.searches()
            else None
        ),
    )
    return bind_ingress(handles, settings, config.ingress, access)
