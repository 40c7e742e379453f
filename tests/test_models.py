import sys
import textwrap

import pytest
import torch
from torch import nn

from deba.errors import DebaError
from deba.models import MODEL_NAMES, TORCHVISION_MODELS, ResizeInput, build_model, canonical_model_name

torch.set_num_threads(1)


@pytest.mark.parametrize("name", [n for n in TORCHVISION_MODELS if n != "vit_b_16"] + ["tiny_cnn", "tiny_mlp"])
def test_builds_with_output_shape_on_cifar_input(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7)
    model.eval()  # eval: a batch of 2 is fine for BatchNorm either way, and it is faster
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_vit_b_16_is_wrapped_to_resize_to_224():
    model = build_model("vit_b_16", num_classes=5)
    assert isinstance(model, ResizeInput) and model.size == 224
    assert model.model.heads.head.out_features == 5
    seen = []
    model.model = _Recorder(seen)  # the forward of the real ViT is too slow for a CPU test
    out = model(torch.randn(2, 3, 32, 32))
    assert seen == [(2, 3, 224, 224)] and out.shape == (2, 5)
    # already 224: passed through untouched
    x = torch.randn(1, 3, 224, 224)
    model(x)
    assert seen[-1] == (1, 3, 224, 224)
    # built for 224 input directly: no wrapper
    assert not isinstance(build_model("vit_b_16", num_classes=5, image_size=224), ResizeInput)


class _Recorder(nn.Module):
    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        return torch.zeros(x.shape[0], 5)


def test_resize_matches_bilinear_interpolation():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    seen = []
    wrapper = ResizeInput(_Identity(seen), 8)
    wrapper(x)
    expected = torch.nn.functional.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.equal(seen[0], expected)


class _Identity(nn.Module):
    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def forward(self, x):
        self.seen.append(x)
        return x


def test_alias_and_canonical_names():
    assert canonical_model_name("mobilenet_v3") == "mobilenet_v3_large"
    assert canonical_model_name("ResNet18") == "resnet18"
    assert canonical_model_name("ViT-B-16") == "vit_b_16"
    model = build_model("mobilenet_v3", num_classes=3)
    reference = build_model("mobilenet_v3_large", num_classes=3)
    assert [k for k in model.state_dict()] == [k for k in reference.state_dict()]
    assert set(MODEL_NAMES) >= {"resnet18", "resnet50", "densenet121", "efficientnet_b0", "mobilenet_v3_large",
                                "mobilenet_v3_small", "vit_b_16", "tiny_cnn", "tiny_mlp"}


def test_tiny_models_batchnorm_presence():
    assert any(isinstance(m, nn.BatchNorm2d) for m in build_model("tiny_cnn", 10).modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in build_model("tiny_mlp", 10).modules())


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_models_for_deba.py").write_text(textwrap.dedent("""
        from torch import nn

        def net(num_classes=10):
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))

        def fixed():
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))

        def not_a_model(num_classes=10):
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_models_for_deba"
    sys.modules.pop("my_models_for_deba", None)


def test_user_model(user_module):
    model = build_model(f"{user_module}:net", num_classes=6)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 6)
    # a constructor without num_classes is called with no arguments
    assert build_model(f"{user_module}:fixed", num_classes=6)(torch.randn(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize("spec, text", [
    (":net", "expected 'package.module:function'"),
    ("no_such_module_xyz:net", "cannot import"),
    ("{mod}:missing", "has no 'missing'"),
    ("{mod}:not_a_model", "not a torch.nn.Module"),
])
def test_user_model_errors(user_module, spec, text):
    with pytest.raises(DebaError, match=text):
        build_model(spec.format(mod=user_module), num_classes=3)


def test_unknown_name_lists_known_ones():
    with pytest.raises(DebaError) as info:
        build_model("resnet19", num_classes=10)
    msg = str(info.value)
    assert "unknown model 'resnet19'" in msg and "\n" not in msg
    for name in MODEL_NAMES:
        assert name in msg
    with pytest.raises(DebaError, match="num_classes"):
        build_model("resnet18", num_classes=0)
