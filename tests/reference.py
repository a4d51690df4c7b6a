"""An independent PyTorch reference of liteCLIP, for parity tests only.

It is the original liteCLIP model (timm ConvNeXt + Hugging Face BertModel + projection heads),
built from those libraries exactly as the original `model.py` did, plus the original pipeline's
preprocessing (PIL + torchvision) and tokenization. Nothing here imports liteclip.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn as nn
import torchvision.transforms as T
from PIL import Image
from tokenizers import BertWordPieceTokenizer
from torchvision.transforms import InterpolationMode
from transformers import BertConfig, BertModel

VOCAB = Path(__file__).resolve().parents[1] / "python/liteclip/data/bert-uncased/vocab.txt"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# (convnext depths, dims), (bert hidden, layers, heads, intermediate, max positions), embed dim
PRESETS = {
    "liteclip": ((3, 3, 9, 3), (96, 192, 384, 768), (256, 4, 4, 1024, 512), 256, 224),
    "liteclip-nano": ((1, 1, 2, 1), (32, 64, 128, 256), (128, 2, 2, 512, 128), 128, 64),
}


def image_transform(size: int = 224):
    return T.Compose(
        [
            T.Resize(size, interpolation=InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(mean=CLIP_MEAN, std=CLIP_STD),
        ]
    )


class ImageEncoder(nn.Module):
    def __init__(self, depths, dims):
        super().__init__()
        if tuple(depths) == (3, 3, 9, 3) and tuple(dims) == (96, 192, 384, 768):
            self.backbone = timm.create_model("convnext_tiny", pretrained=False, num_classes=1)
        else:
            self.backbone = timm.models.convnext.ConvNeXt(depths=depths, dims=dims, num_classes=1)
        self.backbone.head.fc = nn.Identity()

    def forward(self, x):
        return self.backbone(x)


class TextEncoder(nn.Module):
    def __init__(self, hidden, layers, heads, intermediate, positions):
        super().__init__()
        config = BertConfig(
            vocab_size=30522,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            max_position_embeddings=positions,
        )
        self.backbone = BertModel(config)

    def forward(self, inputs):
        out = self.backbone(**inputs)["last_hidden_state"]
        mask = inputs["attention_mask"].unsqueeze(-1).expand(out.size()).float()
        return torch.sum(out * mask, 1) / torch.clamp(mask.sum(1), min=1e-9)


class ProjectionHead(nn.Module):
    def __init__(self, embed_dim, proj_dim):
        super().__init__()
        self.proj = nn.Linear(embed_dim, proj_dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(0.1)
        self.ln = nn.LayerNorm(proj_dim)

    def forward(self, x):
        x = self.proj(x)
        out = self.drop(self.act(x))
        return x + self.ln(out)


class CLIP(nn.Module):
    def __init__(self, preset: str = "liteclip"):
        super().__init__()
        depths, dims, bert, embed, self.image_size = PRESETS[preset]
        self.image_encoder = ImageEncoder(depths, dims)
        self.text_encoder = TextEncoder(*bert)
        self.img_projection = ProjectionHead(dims[-1], embed)
        self.txt_projection = ProjectionHead(bert[0], embed)
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))

    def encode_image(self, pixels):
        e = self.img_projection(self.image_encoder(pixels))
        return e / e.norm(dim=1, keepdim=True)

    def encode_text(self, inputs):
        e = self.txt_projection(self.text_encoder(inputs))
        return e / e.norm(dim=1, keepdim=True)


def perturbed_model(preset: str = "liteclip", seed: int = 0, logit_scale: float = 50.0) -> CLIP:
    """A seeded random model whose norms, layer scales and biases are moved away from their
    init, so that every block changes the output."""
    torch.manual_seed(seed)
    model = CLIP(preset).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(0.5 + 0.2 * torch.randn_like(p))
            elif (
                "norm" in name.lower()
                or ".ln." in name
                or "stem.1" in name
                or ("downsample.0" in name)
            ):
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.3 * torch.randn_like(p))
                else:
                    p.copy_(0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
            elif name == "logit_scale":
                p.fill_(math.log(logit_scale))
            elif p.dim() >= 2:
                p.mul_(1.5)
    return model


def tokenizer() -> BertWordPieceTokenizer:
    return BertWordPieceTokenizer(str(VOCAB), lowercase=True)


def tokenize(texts, max_length: int = 128, pad_to_max: bool = True) -> dict:
    """The original's `padding='max_length', truncation=True, max_length=128`."""
    tok = tokenizer()
    tok.enable_truncation(max_length)
    if pad_to_max:
        tok.enable_padding(length=max_length, pad_id=0, pad_token="[PAD]")
    else:
        tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(list(texts))
    ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


@torch.no_grad()
def predict(model: CLIP, image_path, labels, top_k: int = 5):
    """The original ZeroShotPipeline.predict."""
    img = image_transform(model.image_size)(Image.open(image_path).convert("RGB")).unsqueeze(0)
    text = tokenize(labels)
    logits = model.logit_scale.exp() * (model.encode_image(img) @ model.encode_text(text).t())
    probs = torch.softmax(logits.flatten(), dim=0)
    values, indices = torch.topk(probs, k=min(top_k, len(labels)))
    return [(labels[i], v.item()) for v, i in zip(values, indices)]


def save_original_checkpoint(model: CLIP, path: Path) -> Path:
    """As the original release: `torch.save(model.state_dict())` (an OrderedDict)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path
