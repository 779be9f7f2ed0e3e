"""The naive baseline: one FastAPI process that loads the model and runs it inside each
request handler, one request at a time, no batching, as the original captioning services
serve.

    python bench/naive_server.py PATH CHECKPOINT [CHECKPOINT ...] --port 8123 [--threads 2]
    python bench/naive_server.py --mount PATH CHECKPOINT ... [--mount PATH CHECKPOINT ...] ...

It answers the same route and body as the served app for ``PATH`` (see ``bench/paths.py``), so
the benchmark drives both with the same requests; ``GET /ready`` answers once loaded. One
checkpoint per model of the path, in the order of its ``checkpoints``; the models run with
the settings the served app gives them (generation lengths, guidance, safety checker), through
their replicas' own core built in process (``bench/paths.py``), so only the serving differs.
With ``--mount`` (the smoke run), one process serves several paths, each path's routes under
``/PATH`` (still one request at a time, in the one event loop).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import FastAPI, File, Form, UploadFile

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.paths import (
    PATHS,
    ImageQuestion,
    blip_caption_call,
    blip_vqa_call,
    caption_prompt,
    clip_encode_call,
    diffusion_call,
    served_model,
    vlm_caption_call,
)

#: A route builder: adds its routes to the app, with the model loaded from the checkpoints
#: (one per model of the path, in its order).
Builder = Callable[..., None]
#: Builders by path name.
NAIVE_ROUTES: dict[str, Builder] = {}


def naive_route(name: str) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        NAIVE_ROUTES[name] = builder
        return builder

    return register


@naive_route("clip_image")
def clip_image(app: FastAPI, checkpoint: Path) -> None:
    """``POST /encode_image``: the image encoder's replica core on each request."""
    settings = served_model("clip_image", "clip_image", {"clip_image": checkpoint})
    encode = clip_encode_call(settings, "image", "clip_image")

    @app.post("/encode_image")
    async def encode_image(body: dict) -> dict:
        return {"embedding": list(encode([base64.b64decode(body["image_b64"])])[0])}


@naive_route("clip_text")
def clip_text(app: FastAPI, checkpoint: Path) -> None:
    """``POST /encode_text``: the text encoder's replica core on each request."""
    settings = served_model("clip_text", "clip_text", {"clip_text": checkpoint})
    encode = clip_encode_call(settings, "text", "clip_text")

    @app.post("/encode_text")
    async def encode_text(body: dict) -> dict:
        return {"embedding": list(encode([body["text"]])[0])}


@naive_route("cache_hit")
def cached_captions(app: FastAPI, checkpoint: Path) -> None:
    """The original multi-model captioning handler: key by the image's sha256, the model only
    on a miss."""
    settings = served_model("cache_hit", "models.blip", {"models.blip": checkpoint})
    caption_list = blip_caption_call(settings)
    cache: dict[str, str] = {}

    @app.post("/api/caption-images")
    async def caption_images(images: Annotated[list[UploadFile], File()]) -> dict:
        results = []
        for upload in images:
            data = await upload.read()
            key = hashlib.sha256(data).hexdigest()
            hit = key in cache
            if not hit:
                cache[key] = caption_list([data])[0]
            results.append({"filename": upload.filename, "caption": cache[key], "cache": hit})
        return {"results": results}


def caption_images_route(app: FastAPI, caption: Callable[[list[bytes]], list[str]]) -> None:
    """``POST /api/caption-images``: each upload captioned in turn, no cache (``model`` is
    the one this server loaded)."""

    @app.post("/api/caption-images")
    async def caption_images(images: Annotated[list[UploadFile], File()]) -> dict:
        results = []
        for upload in images:
            results.append(
                {"filename": upload.filename, "caption": caption([await upload.read()])[0]}
            )
        return {"results": results}


@naive_route("blip_caption")
def blip_captions(app: FastAPI, checkpoint: Path) -> None:
    """The original captioning services' handler: BLIP on every upload as it comes."""
    settings = served_model("blip_caption", "models.blip", {"models.blip": checkpoint})
    caption_images_route(app, blip_caption_call(settings))


@naive_route("vlm")
def vlm_captions(app: FastAPI, checkpoint: Path) -> None:
    """Multi-model captioning's VLM captions, one image at a time."""
    settings = served_model("vlm", "models.intern_vlm", {"models.intern_vlm": checkpoint})
    caption_images_route(app, vlm_caption_call(settings))


@naive_route("blip_vqa")
def blip_vqa(app: FastAPI, checkpoint: Path) -> None:
    """Visual question answering's two routes: ``/upload`` keeps the bytes under a new id
    (no caption), ``/question`` runs BLIP VQA on the stored image."""
    answer = blip_vqa_call(served_model("blip_vqa", "vqa", {"vqa": checkpoint}))
    uploads: dict[str, bytes] = {}

    @app.post("/upload")
    async def upload(image: Annotated[UploadFile, File()]) -> dict:
        image_id = uuid.uuid4().hex
        uploads[image_id] = await image.read()
        return {"image_id": image_id}

    @app.post("/question")
    async def question(body: dict) -> dict:
        item = ImageQuestion(uploads[body["image_id"]], body["question"])
        return {**body, "answer": answer([item])[0]}


@naive_route("diffusion")
def diffusion(app: FastAPI, checkpoint: Path) -> None:
    """Image generation's ``POST /generate``: the pipeline on each request, a base64 PNG back."""
    generate = diffusion_call(served_model("diffusion", "sd", {"sd": checkpoint}))

    @app.post("/generate")
    async def generate_image(body: dict) -> dict:
        (png,) = generate(
            [body["description"]],
            [body["seed"]],
            body["width"],
            body["height"],
            body["num_inference_steps"],
        )
        return {"image": base64.b64encode(png).decode(), "seed": body["seed"]}


@naive_route("pipeline")
def similar_image(app: FastAPI, blip_checkpoint: Path, sd_checkpoint: Path) -> None:
    """The original similar image generation app: caption the upload, then generate from the
    caption, in one handler."""
    checkpoints = {"models.blip": blip_checkpoint, "sd": sd_checkpoint}
    caption = blip_caption_call(served_model("pipeline", "models.blip", checkpoints))
    generate = diffusion_call(served_model("pipeline", "sd", checkpoints))

    @app.post("/api/similar-image")
    async def similar(
        image: Annotated[UploadFile, File()],
        width: Annotated[int, Form()],
        height: Annotated[int, Form()],
        num_inference_steps: Annotated[int, Form()],
        seed: Annotated[int, Form()],
    ) -> dict:
        text = caption([await image.read()])[0]
        (png,) = generate([caption_prompt(text)], [seed], width, height, num_inference_steps)
        return {"caption": text, "generated": {"image": base64.b64encode(png).decode()}}


def main() -> None:
    """Load the models of the path (or of every ``--mount``) and serve until stopped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", choices=sorted(NAIVE_ROUTES))
    parser.add_argument("checkpoints", type=Path, nargs="*", help="one per model of the path")
    parser.add_argument(
        "--mount",
        nargs="+",
        action="append",
        default=[],
        metavar="PATH CHECKPOINT",
        help="serve PATH's routes under /PATH, from its checkpoints (repeatable)",
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if (args.path is None) == (not args.mount):
        parser.error("give either PATH CHECKPOINT ... or --mount PATH CHECKPOINT ...")
    mounts = [(args.path, args.checkpoints)] if args.path else []
    mounts += [(name, [Path(c) for c in checkpoints]) for name, *checkpoints in args.mount]
    for name, checkpoints in mounts:
        if name not in NAIVE_ROUTES:
            parser.error(f"unknown path {name!r}: one of {sorted(NAIVE_ROUTES)}")
        if len(checkpoints) != len(PATHS[name].checkpoints):
            parser.error(f"{name} takes {len(PATHS[name].checkpoints)} checkpoints")

    import torch

    torch.set_num_threads(args.threads)
    app = FastAPI()
    if args.path:
        NAIVE_ROUTES[args.path](app, *args.checkpoints)
    else:
        for name, checkpoints in mounts:
            routes = FastAPI()
            NAIVE_ROUTES[name](routes, *checkpoints)
            app.mount(f"/{name}", routes)

    @app.get("/ready")
    async def ready() -> dict:
        return {"ready": True}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
