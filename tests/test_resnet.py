"""model=resnet: the CIFAR ResNet shape of He et al. 2016 (parameter count, stage sizes, one block against a
plain-torch float64 oracle), its plain twin, and the he2016_cifar preset at its real size."""
import pytest
import torch
import torch.nn.functional as F

from gradexp.models.resnet import ResNet
from tests.conftest import compose_config


def resnet(depth: int, residual: bool = True, norm: str = "batchnorm", shape=(3, 32, 32)) -> ResNet:
    torch.manual_seed(0)
    return ResNet(shape, 10, depth=depth, width=16, residual=residual, activation="relu", norm=norm)


def count_oracle(n: int) -> int:
    """Weights by hand: stem conv + BN, then per stage n blocks of two 3x3 convs + two BNs (no conv biases), head."""
    total = 3 * 16 * 9 + 2 * 16
    c_in = 16
    for c in (16, 32, 64):
        for _ in range(n):
            total += c_in * c * 9 + c * c * 9 + 4 * c
            c_in = c
    return total + 64 * 10 + 10


@pytest.mark.parametrize("depth, layers", [(3, 20), (9, 56)])
def test_parameter_count_and_layer_count_match_the_paper(depth, layers):
    net = resnet(depth)
    assert sum(p.numel() for p in net.parameters()) == count_oracle(depth)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    assert convs + 1 == layers == 6 * depth + 2  # + the linear head
    assert [name for name, _ in net.watched_layers()] == [f"layers.{i}" for i in range(3 * depth + 1)]  # stem + blocks


def test_stages_halve_the_map_and_double_the_width():
    net, shapes = resnet(2), []
    for _, layer in net.watched_layers()[1:]:
        layer.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert shapes == [(16, 32, 32)] * 2 + [(32, 16, 16)] * 2 + [(64, 8, 8)] * 2


@pytest.mark.parametrize("residual", [True, False])
def test_a_downsampling_block_against_a_float64_oracle(residual):
    net = resnet(1, residual=residual, norm="none").double()
    block = net.layers[2]  # after the stem and stage 1's block: 16 -> 32 channels, stride 2
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    y = F.relu(F.conv2d(x, block.conv1.weight, block.conv1.bias, stride=2, padding=1))
    y = F.conv2d(y, block.conv2.weight, block.conv2.bias, padding=1)
    if residual:  # option A: subsample, append 16 zero channels
        y = y + torch.cat([x[:, :, ::2, ::2], torch.zeros(2, 16, 4, 4, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(block(x), F.relu(y), rtol=1e-12, atol=1e-12)


def test_plain_twin_has_the_same_parameters():
    a, b = resnet(2, residual=True), resnet(2, residual=False)
    assert [(n, p.shape) for n, p in a.named_parameters()] == [(n, p.shape) for n, p in b.named_parameters()]
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(a(x), b(x))


def test_he2016_cifar_preset_is_resnet56_and_its_plain_twin_on_cifar10():
    cfg = compose_config(["experiment=he2016_cifar"], tiny=False)
    assert (cfg.model._target_, cfg.model.depth, cfg.model.width) == ("gradexp.models.resnet.ResNet", 9, 16)
    assert (cfg.data.name, cfg.norm.name, cfg.data.augment) == ("cifar10", "batchnorm", "standard")
    assert compose_config(["model=resnet"]).model.residual is True
