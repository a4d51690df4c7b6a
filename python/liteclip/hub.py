"""Weights from the Hugging Face Hub, through `huggingface_hub` (the `hub` extra:
``pip install 'liteclip[hub]'``) and its usual cache (``HF_HOME`` / ``HF_HUB_CACHE``; with
``HF_HUB_OFFLINE=1`` only what the cache holds is used).

What is fetched, and from where:

- ``train(image_weights="timm/convnext_tiny.in12k_ft_in1k")``: that repository's
  ``model.safetensors`` (or ``pytorch_model.bin``): timm ConvNeXt weights for the image tower.
- ``train(text_weights="google/bert_uncased_L-4_H-256_A-4")``: the repository's
  ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``): a BERT for the text
  tower.
- ``LiteClip.load("hf-hub:owner/name")`` (and ``ZeroShotPipeline("hf-hub:owner/name")``): the
  ``config.json`` and ``model.safetensors`` that ``LiteClip.push_to_hub`` writes.

A value that names an existing file or folder is always a local path; ``hf-hub:`` forces the
Hub reading of one that could be both.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

PREFIX = "hf-hub:"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# What each kind of weights needs from its repository (the first file found is used).
_TOWER_FILES = {
    "image_weights": ["model.safetensors", "pytorch_model.bin"],
    "text_weights": ["model.safetensors", "pytorch_model.bin"],
}


def repo_id(spec: str | os.PathLike[str] | None) -> str | None:
    """The Hub repository `spec` names, or None when it is a local path (or nothing)."""
    if spec is None:
        return None
    text = os.fspath(spec)
    if text.startswith(PREFIX):
        return text[len(PREFIX) :]
    if os.path.exists(text) or not _REPO_ID.match(text):
        return None
    return text


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise ImportError(
            "weights from the Hugging Face Hub need huggingface_hub: pip install 'liteclip[hub]'"
        ) from None
    return huggingface_hub


def _download(repo: str, candidates: list[str], extra: tuple[str, ...] = ()) -> Path:
    """The cached path of the first of `candidates` the repository has (fetched if need be),
    with `extra` files beside it; FileNotFoundError, saying why, when none can be had."""
    hub = _hub()
    from huggingface_hub import errors

    missing = []
    for filename in candidates:
        try:
            path = Path(hub.hf_hub_download(repo, filename))
        except errors.RepositoryNotFoundError:
            raise FileNotFoundError(f"no Hugging Face Hub repository {repo!r}") from None
        except errors.EntryNotFoundError as error:  # not in the repository, or not cached
            missing.append(f"{filename} ({type(error).__name__})")
            continue
        for name in extra:
            hub.hf_hub_download(repo, name)
        return path
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    where = "in the Hugging Face cache (HF_HUB_OFFLINE is set)" if offline else "on the Hub"
    raise FileNotFoundError(f"{repo}: none of {', '.join(missing)} found {where}")


def tower_weights(option: str, spec: Any) -> Any:
    """The local path for `image_weights=` / `text_weights=`: `spec` itself, or for a Hub id the
    cached weight file (text: its folder, with `config.json`)."""
    repo = repo_id(spec)
    if repo is None:
        return spec
    try:
        if option == "text_weights":
            return str(_download(repo, _TOWER_FILES[option], extra=("config.json",)).parent)
        return str(_download(repo, _TOWER_FILES[option]))
    except FileNotFoundError as error:
        local = "" if os.fspath(spec).startswith(PREFIX) else f"no file or folder {spec!r}, and "
        raise FileNotFoundError(f"{option}: {local}{error}") from None


def model_folder(spec: str) -> str:
    """The cached folder of a liteclip model on the Hub (`hf-hub:owner/name`)."""
    repo = repo_id(spec) or spec.removeprefix(PREFIX)
    return str(_download(repo, ["model.safetensors"], extra=("config.json",)).parent)


MODEL_CARD = """---
library_name: liteclip
tags:
- clip
- zero-shot-image-classification
- liteclip
---

# {name}

A [liteclip](https://pypi.org/project/liteclip/) model: a small CLIP (ConvNeXt image tower,
BERT text tower, {embed_dim}-d shared embeddings, {image_size}-pixel images, {parameters:,}
parameters).

```python
from liteclip import ZeroShotPipeline
pipe = ZeroShotPipeline("hf-hub:{repo}")
pipe.predict("photo.jpg", ["a photo of a dog", "a photo of a cat"])
```

Files: `config.json` (the model config) and `model.safetensors` (the weights), as
`LiteClip.save` writes them.
"""


def push_to_hub(
    model: Any,
    repo: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload liteclip model",
) -> str:
    """Uploads `model` (config, safetensors weights and a short model card) to the Hub
    repository `repo`, creating it if needed; returns the commit's URL."""
    hub = _hub()
    repo = repo_id(repo) or repo
    api = hub.HfApi(token=token)
    api.create_repo(repo, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model.save(folder)
        card = MODEL_CARD.format(
            name=repo.split("/")[-1],
            repo=repo,
            embed_dim=model.embed_dim,
            image_size=model.image_size,
            parameters=model.num_parameters,
        )
        (folder / "README.md").write_text(card)
        info = api.upload_folder(
            repo_id=repo, folder_path=str(folder), commit_message=commit_message
        )
    return str(getattr(info, "commit_url", info))
