"""How to load and run the embedding models a profile names (task ``embed``), derived from the
checkpoint.

Two kinds serve every such model:

- :class:`DualEncoder`: a CLIP-like model of transformers (``AutoModel`` with
  ``get_image_features`` and ``get_text_features``: CLIP, SigLIP, SigLIP 2, ...), images and
  texts in one space. Texts are padded as the model was trained: to ``max_length`` for the
  SigLIP family, which pools the last position, to the longest text otherwise.
- :class:`SentenceTransformerEncoder`: a sentence-transformers folder (``modules.json``): texts, and
  images too for its CLIP models.

Vectors leave raw (the model's own features, not normalized): the ingress normalizes on
request, as for the built-in CLIP encoders.

Usage::

    encoder = derive_encoder(path)
    encoder.load(path, torch.device("cpu"), torch.float32)
    vectors = encoder.encode_images([image]) + encoder.encode_texts(["a red circle"])

Transformers and sentence-transformers are imported lazily.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from PIL import Image

from vlgraph.errors import UnsupportedModelError

#: Model types that pool the text's last position and were trained on texts padded to
#: ``max_length``: their vectors change with any other padding.
_PADDED_TO_MAX_LENGTH = frozenset({"siglip", "siglip2"})
#: Modality names, as profiles and the API name them.
IMAGE, TEXT = "image", "text"


@dataclass
class EncoderFamily:
    """One kind of embedding model: what it embeds, how it loads and encodes a batch."""

    name: str
    modalities: tuple[str, ...]
    _model: Any = field(default=None, init=False, repr=False)
    _processor: Any = field(default=None, init=False, repr=False)

    def load(self, path: Path, device: torch.device, dtype: torch.dtype) -> None:
        """The model (eval mode, on ``device`` in ``dtype``) and its processor."""
        raise NotImplementedError

    def encode_images(self, images: list[Image.Image]) -> list[list[float]]:
        """One raw vector per image."""
        raise NotImplementedError

    def encode_texts(self, texts: list[str]) -> tuple[list[list[float]], list[int]]:
        """One raw vector per text, and the tokens the model read of each."""
        raise NotImplementedError

    @property
    def dimension(self) -> int:
        """The length of every vector."""
        raise NotImplementedError


class DualEncoder(EncoderFamily):
    """A CLIP-like transformers model: ``get_image_features`` and ``get_text_features``."""

    def load(self, path: Path, device: torch.device, dtype: torch.dtype) -> None:
        from transformers import AutoModel, AutoProcessor

        self._processor = AutoProcessor.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path, dtype=dtype).to(device).eval()
        self._device, self._dtype = device, dtype

    def encode_images(self, images: list[Image.Image]) -> list[list[float]]:
        import torch

        pixels = self._processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            features = self._model.get_image_features(
                pixel_values=pixels.to(self._device, self._dtype)
            )
        return _rows(features)

    def encode_texts(self, texts: list[str]) -> tuple[list[list[float]], list[int]]:
        import torch

        padding = "max_length" if self.name in _PADDED_TO_MAX_LENGTH else True
        tokenizer = self._processor.tokenizer
        inputs = tokenizer(texts, padding=padding, truncation=True, return_tensors="pt")
        counts = [len(ids) for ids in tokenizer(texts, truncation=True)["input_ids"]]
        with torch.inference_mode():
            features = self._model.get_text_features(
                **{name: tensor.to(self._device) for name, tensor in inputs.items()}
            )
        return _rows(features), counts

    @property
    def dimension(self) -> int:
        config = self._model.config
        return int(getattr(config, "projection_dim", None) or config.text_config.hidden_size)


class SentenceTransformerEncoder(EncoderFamily):
    """A sentence-transformers model: texts, and images for its CLIP models."""

    def load(self, path: Path, device: torch.device, dtype: torch.dtype) -> None:
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(path), device=str(device)).to(dtype).eval()

    def encode_images(self, images: list[Image.Image]) -> list[list[float]]:
        return self._encode(images)

    def encode_texts(self, texts: list[str]) -> tuple[list[list[float]], list[int]]:
        features = self._model.tokenize(texts)
        counts = [int(count) for count in features["attention_mask"].sum(dim=1).tolist()]
        return self._encode(texts), counts

    def _encode(self, inputs: list[Any]) -> list[list[float]]:
        vectors = self._model.encode(
            inputs, batch_size=len(inputs), convert_to_numpy=True, show_progress_bar=False
        )
        return [vector.astype(float).tolist() for vector in vectors]

    @property
    def dimension(self) -> int:
        return int(self._model.get_embedding_dimension())


def _rows(features: Any) -> list[list[float]]:
    # transformers 5 returns an output object whose pooled vector is the feature.
    tensor = getattr(features, "pooler_output", features)
    return tensor.float().cpu().tolist()


def derive_encoder(path: Path) -> EncoderFamily:
    """The encoder family of the checkpoint at ``path``: sentence-transformers when it has a
    ``modules.json``, else a transformers dual encoder. Raises
    :class:`~vlgraph.vlm_families.UnsupportedModelError` for a checkpoint that is neither."""
    path = Path(path)
    modules = path / "modules.json"
    if modules.is_file():
        kinds = " ".join(module.get("type", "") for module in json.loads(modules.read_text()))
        reads_images = "CLIPModel" in kinds or "Clip" in kinds
        return SentenceTransformerEncoder(
            "sentence-transformers", (IMAGE, TEXT) if reads_images else (TEXT,)
        )
    config = path / "config.json"
    try:
        found = json.loads(config.read_text())
    except (OSError, ValueError) as error:
        raise UnsupportedModelError(
            f"{path} is neither a sentence-transformers folder (modules.json) nor a "
            f"transformers checkpoint ({config}: {error})"
        ) from None
    model_type = str(found.get("model_type", ""))
    if not _is_dual_encoder(model_type):
        raise UnsupportedModelError(
            f"{path} is a {model_type!r} checkpoint, not an image-text dual encoder: an "
            "embedding model must be CLIP-like (get_image_features and get_text_features: "
            "clip, siglip, siglip2, ...) or a sentence-transformers folder"
        )
    return DualEncoder(model_type, (IMAGE, TEXT))


def _is_dual_encoder(model_type: str) -> bool:
    """Whether ``AutoModel`` builds a model with both feature methods for ``model_type``."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    class_name = MODEL_MAPPING_NAMES.get(model_type)
    if not class_name:
        return False
    import transformers

    model_class = getattr(transformers, class_name, None)
    return all(
        callable(getattr(model_class, method, None))
        for method in ("get_image_features", "get_text_features")
    )
