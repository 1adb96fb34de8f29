import pytest
import torch

from pollen.errors import ConfigError, ModelError
from pollen.models import available_models, build_model, get_augmentation
from pollen.models.augment import normalize, random_crop, random_hflip


def test_fedavg_cnn_matches_the_paper():
    m = build_model("fedavg_cnn", (1, 28, 28), 10)
    assert sum(p.numel() for p in m.parameters()) == 1_663_370
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_cifar_cnn_is_the_seed_model():
    m = build_model("cifar_cnn", (3, 32, 32), 10)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    kinds = [type(x).__name__ for x in m.modules()]
    assert kinds.count("BatchNorm2d") == 2 and "Dropout" in kinds
    assert m.classifier[0].in_features == 128 * 8 * 8 and m.classifier[0].out_features == 512


def test_registry_errors_list_names():
    with pytest.raises(ModelError, match="fedavg_cnn"):
        build_model("resnet9000", (1, 28, 28), 10)
    with pytest.raises(ModelError, match="mlp"):
        build_model("fedavg_cnn", (30,), 2)
    assert {"mlp", "small_cnn", "logreg"} <= set(available_models())
    assert build_model("mlp", (30,), 2)(torch.zeros(4, 30)).shape == (4, 2)


def test_random_crop_matches_a_reference_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    out = random_crop(x, 5, 2, g)
    g2 = torch.Generator().manual_seed(0)
    dy = torch.randint(0, 5, (2,), generator=g2)
    dx = torch.randint(0, 5, (2,), generator=g2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        torch.testing.assert_close(out[i], padded[i, :, dy[i] : dy[i] + 5, dx[i] : dx[i] + 5])


def test_flip_and_normalize():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, 4, 4)
    out = random_hflip(x, g)
    flipped = [(out[i] == x[i].flip(-1)).all() and not (out[i] == x[i]).all() for i in range(64)]
    assert 10 < sum(bool(f) for f in flipped) < 54
    n = normalize(torch.ones(1, 3, 2, 2), (0.5, 0.5, 0.5), (0.5, 0.25, 1.0))
    assert n[0, :, 0, 0].tolist() == [1.0, 2.0, 0.5]
    assert get_augmentation("none") is None
    with pytest.raises(ConfigError):
        get_augmentation("mixup")
