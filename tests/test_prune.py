"""datadiet.prune against torch.nn.utils.prune.global_unstructured on torchvision's resnet18: the
same kept count and the same mask; biases and norm layers excluded; seeded worker densities."""

import pytest
import torch
from torch.nn.utils import prune as torch_prune

import datadiet

torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed (the CPU-only torch check)")


@pytest.mark.parametrize("density", [0.9, 0.5, 0.05])
def test_same_masks_as_global_unstructured_on_resnet18(density):
    torch.manual_seed(0)
    ours = torchvision.models.resnet18(num_classes=10)
    theirs = torchvision.models.resnet18(num_classes=10)
    theirs.load_state_dict(ours.state_dict())
    masks = datadiet.prune.magnitude(ours, density)
    modules = dict(theirs.named_modules())
    pairs = [(modules[name.rsplit(".", 1)[0]], "weight") for name in masks]
    torch_prune.global_unstructured(pairs, pruning_method=torch_prune.L1Unstructured, amount=1 - density)
    buffers = dict(theirs.named_buffers())
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == total - round((1 - density) * total)
    for name, mask in masks.items():
        assert torch.equal(mask, buffers[name + "_mask"].bool()), name
        torch.testing.assert_close(dict(ours.named_parameters())[name], getattr(modules[name.rsplit(".", 1)[0]],
                                                                               "weight"))


def test_biases_and_norm_layers_are_excluded():
    model = torchvision.models.resnet18(num_classes=10)
    names = datadiet.prune.prunable(model)
    assert "fc.bias" not in names and "bn1.weight" not in names and "conv1.weight" in names and "fc.weight" in names
    before = {k: v.clone() for k, v in model.state_dict().items()}
    datadiet.prune.magnitude(model, 0.5)
    after = model.state_dict()
    assert torch.equal(after["bn1.weight"], before["bn1.weight"]) and torch.equal(after["fc.bias"], before["fc.bias"])
    assert datadiet.prune.sparsity(model) == pytest.approx(0.5, abs=1e-6)


def test_per_tensor_scope():
    model = torchvision.models.resnet18(num_classes=10)
    masks = datadiet.prune.magnitude(model, 0.3, scope="tensor")
    for name, m in masks.items():
        assert int(m.sum()) == m.numel() - round(0.7 * m.numel()), name


def test_worker_densities_are_seeded_and_in_range():
    d = datadiet.prune.worker_densities(10, seed=3)
    assert d == datadiet.prune.worker_densities(10, seed=3) and d != datadiet.prune.worker_densities(10, seed=4)
    assert all(0.85 <= x <= 0.95 for x in d) and len(d) == 10
    with pytest.raises(ValueError, match="need 0 < low <= high <= 1"):
        datadiet.prune.worker_densities(3, 0.9, 0.8)
