"""Models by name: the paper's torchvision architectures, two tiny test models, and a user's own.

``build_model(name, num_classes)`` returns a freshly initialised ``nn.Module`` (never pretrained
weights). The torchvision models are used unchanged on CIFAR-sized 32x32 input, which is what the
paper's timings imply for the CNNs (their global pooling accepts any size). ViT-B/16 has a fixed
224x224 input; it is wrapped in :class:`ResizeInput`, which resizes each batch to 224x224 on the
device (bilinear) before the transformer, so the same 32x32 data feeds every architecture.

A user's model is named ``"package.module:function"``: the module is imported and the function called
with ``num_classes=...`` (or with no arguments when it does not take that keyword).
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DebaError

TORCHVISION_MODELS = (
    "resnet18",
    "resnet50",
    "densenet121",
    "efficientnet_b0",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "vit_b_16",
)
TINY_MODELS = ("tiny_cnn", "tiny_mlp")
LANGUAGE_MODELS = ("gpt",)  # deba.gpt; num_classes is the vocabulary size
MODEL_NAMES = TORCHVISION_MODELS + TINY_MODELS + LANGUAGE_MODELS
# Names the paper and users write for the same models.
ALIASES = {"mobilenet_v3": "mobilenet_v3_large", "vit_b16": "vit_b_16", "mobilenetv3": "mobilenet_v3_large"}
VIT_IMAGE_SIZE = 224


class ResizeInput(nn.Module):
    """Resize every input batch to ``size`` x ``size`` (bilinear, on the batch's device), then run ``model``.

    Lets a model with a fixed input resolution (torchvision's ViT-B/16: 224) train on 32x32 CIFAR
    batches. A batch that already has the target size passes through untouched.
    """

    def __init__(self, model: nn.Module, size: int):
        super().__init__()
        self.model = model
        self.size = int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.model(x)


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    """A small, fast CNN with BatchNorm (three conv blocks, global pooling): for tests and the demo."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(3, 16), nn.MaxPool2d(2),
        *block(16, 32), nn.MaxPool2d(2),
        *block(32, 64),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )


def tiny_mlp(num_classes: int = 10) -> nn.Module:
    """A two-layer MLP without BatchNorm: a sample's output does not depend on the rest of its batch,
    so gradient accumulation and data-parallel runs can be compared exactly with full-batch training.
    The input is average-pooled to 8x8 first, so any image size works."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(8), nn.Flatten(),
        nn.Linear(3 * 8 * 8, 64), nn.ReLU(inplace=True), nn.Linear(64, num_classes),
    )


def canonical_model_name(name: str) -> str:
    """The canonical name of a built-in model (``mobilenet_v3`` -> ``mobilenet_v3_large``).

    A user model spec ``"package.module:function"`` is returned unchanged; an unknown name raises
    :class:`DebaError` listing the known ones.
    """
    if not isinstance(name, str) or not name.strip():
        raise DebaError(f"model name must be a non-empty string, got {name!r}")
    if ":" in name:
        return name.strip()
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in MODEL_NAMES:
        raise DebaError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}, mobilenet_v3 "
                        "(= mobilenet_v3_large), or 'package.module:function' for your own")
    return key


def _user_model(spec: str, num_classes: int) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise DebaError(f"model {spec!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise DebaError(f"model {spec!r}: cannot import {module_name!r} ({e})") from None
    except Exception as e:  # the module itself is broken (SyntaxError, an error at import time)
        raise DebaError(f"model {spec!r}: importing {module_name!r} failed: {_one_line(e)}") from None
    fn: Callable = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise DebaError(f"model {spec!r}: module {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise DebaError(f"model {spec!r}: {attr!r} is not callable")
    try:
        params = inspect.signature(fn).parameters.values()
        takes_classes = any(p.name == "num_classes" or p.kind is p.VAR_KEYWORD for p in params)
    except (TypeError, ValueError):  # builtins without a signature: try the keyword
        takes_classes = True
    try:
        model = fn(num_classes=num_classes) if takes_classes else fn()
    except Exception as e:
        raise DebaError(f"model {spec!r}: {attr}({'num_classes=' + str(num_classes) if takes_classes else ''}) "
                        f"raised {_one_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise DebaError(f"model {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def check_model_output(model: nn.Module, sample_shape: Sequence[int], num_classes: int, name: str,
                       device: torch.device | str = "cpu", channels_last: bool = False) -> None:
    """Run a user's model once on two blank inputs of ``sample_shape`` (C, H, W) and check that it gives
    ``num_classes`` logits per input, so a model that does not fit the data fails here, in one line, rather
    than inside the first training step. Eval mode and no autograd: no state of the model changes."""
    x = torch.zeros((2, *sample_shape), device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        raise DebaError(f"model {name!r} fails on a batch of {'x'.join(map(str, sample_shape))} inputs: "
                        f"{_one_line(e)}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DebaError(f"model {name!r} must return logits of shape (batch, {num_classes}) for "
                        f"{'x'.join(map(str, sample_shape))} inputs, got {got}")


def build_model(name: str, num_classes: int, image_size: int = 32) -> nn.Module:
    """A freshly initialised model by name (see the module docstring for the names).

    ``image_size`` is the side of the input images; it only decides whether ViT-B/16 needs its resize
    wrapper (any size other than 224 gets one).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise DebaError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    key = canonical_model_name(name)
    if ":" in key:
        return _user_model(key, num_classes)
    if key == "tiny_cnn":
        return tiny_cnn(num_classes)
    if key == "tiny_mlp":
        return tiny_mlp(num_classes)
    if key == "gpt":
        from .gpt import build_gpt

        return build_gpt(num_classes)
    import torchvision.models as tvm

    model = getattr(tvm, key)(weights=None, num_classes=num_classes)
    if key == "vit_b_16" and image_size != VIT_IMAGE_SIZE:
        model = ResizeInput(model, VIT_IMAGE_SIZE)
    return model
