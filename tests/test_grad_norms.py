"""scores.grad_norms against torch.func.vmap(grad) over the whole model: every layer rule in every
mode (float64 to ~1e-10, float32 to ~1e-4), grouped / depthwise / 'same' / reflect-padded
convolutions, embeddings with repeated tokens and padding, shared modules, the torch.func fallback
(raw parameters, attention), ResNet-18, MobileNetV2 and a tiny ViT at 32 px; batch invariance,
frozen parameters, and the refusals (train-mode BatchNorm, uncovered / tied / foreign-used
parameters, reduced losses, inputs changed in place)."""

import pytest
import torch
import torch.nn.functional as F
from grad_norm_helpers import vmap_grad_norms
from torch import nn

from datadiet.scores import grad_norms

try:
    import torchvision
except Exception:  # absent, or built for another torch (scripts/check_wheel.sh)
    torchvision = None
requires_torchvision = pytest.mark.skipif(torchvision is None, reason="torchvision cannot be imported")

MODES = ["auto", "ghost", "instantiate"]


class Head(nn.Module):
    """``layer`` then a Linear head on the flattened output (every layer's gradient is non-trivial)."""

    def __init__(self, layer, out_features, classes=4):
        super().__init__()
        self.layer = layer
        self.head = nn.Linear(out_features, classes)

    def forward(self, x):
        return self.head(torch.tanh(self.layer(x)).flatten(1))


def check(model, x, y, mode="auto", rtol=1e-10, **kwargs):
    want, want_params = vmap_grad_norms(model, x, y, per_param=True, **kwargs)
    got, layers = grad_norms(model, x, y, mode=mode, per_layer=True, **kwargs)
    wide = any(p.dtype == torch.float64 for p in model.parameters())
    assert got.dtype == (torch.float64 if wide else torch.float32)
    assert float(want.min()) > 0
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=0)
    # per layer: the module's own parameters, squares adding up to the total
    torch.testing.assert_close(sum(v.double().square() for v in layers.values()), got.double().square(),
                               rtol=max(rtol, 1e-12), atol=0)
    return got, layers, want_params


def rand(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


LAYERS = {
    "linear_2d": (lambda: nn.Linear(6, 5), (6,), 5),
    "linear_3d": (lambda: nn.Linear(6, 5), (7, 6), 35),
    "linear_4d": (lambda: nn.Linear(6, 5), (2, 3, 6), 30),
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=1), (4, 11), 36),
    "conv1d_same_reflect": (lambda: nn.Conv1d(4, 6, 4, padding="same", padding_mode="reflect"), (4, 9), 54),
    "conv1d_groups_dilation": (lambda: nn.Conv1d(4, 6, 3, groups=2, dilation=2), (4, 12), 48),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 7, 7), 64),
    "conv2d_same_even": (lambda: nn.Conv2d(3, 4, (2, 4), padding="same", dilation=(2, 1)), (3, 5, 6), 120),
    "conv2d_circular": (lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"), (3, 5, 5), 100),
    "conv2d_groups": (lambda: nn.Conv2d(4, 6, 3, groups=2, bias=False), (4, 5, 5), 54),
    "conv2d_depthwise": (lambda: nn.Conv2d(4, 8, 3, groups=4, padding=1), (4, 5, 5), 200),
    "layer_norm": (lambda: nn.LayerNorm(6), (3, 6), 18),
    "layer_norm_2d_no_bias": (lambda: nn.LayerNorm((3, 6), bias=False), (3, 6), 18),
    "group_norm": (lambda: nn.GroupNorm(2, 4), (4, 3, 3), 36),
    "batch_norm_2d": (lambda: nn.BatchNorm2d(4), (4, 3, 3), 36),
    "batch_norm_1d": (lambda: nn.BatchNorm1d(5), (5,), 5),
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_rules_match_vmap_grad_float64(name, mode):
    make, shape, flat = LAYERS[name]
    torch.manual_seed(1)
    model = Head(make(), flat).double()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
    x = rand(5, *shape, seed=2)
    y = torch.tensor([0, 1, 2, 3, 1])
    _, layers, params = check(model, x, y, mode)
    own = sum(v for k, v in params.items() if k.startswith("layer."))
    torch.testing.assert_close(layers["layer"].square(), own, rtol=1e-10, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_float32_within_1e_4(mode):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, groups=1), nn.ReLU(inplace=True),
                          nn.Conv2d(8, 8, 3, groups=8), nn.GroupNorm(4, 8), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    check(model, rand(6, 3, 6, 6, dtype=torch.float32, seed=4), torch.arange(6) % 5, mode, rtol=1e-4)


class Tokens(nn.Module):
    def __init__(self, padding_idx=None):
        super().__init__()
        self.embed = nn.Embedding(11, 6, padding_idx=padding_idx)
        self.proj = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, ids):
        h = self.embed(ids)
        h = self.proj(h) + self.proj(h.flip(1))  # one module called twice: its gradient sums both calls
        return self.head(torch.tanh(h).mean(1))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding_repeated_tokens_padding_and_shared_module(padding_idx, mode):
    torch.manual_seed(5)
    model = Tokens(padding_idx).double()
    ids = torch.tensor([[1, 1, 1, 2, 0], [3, 4, 3, 0, 0], [5, 6, 7, 8, 9], [2, 2, 2, 2, 2]])
    _, layers, params = check(model, ids, torch.tensor([0, 1, 2, 0]), mode)
    torch.testing.assert_close(layers["embed"].square(), params["embed.weight"], rtol=1e-10, atol=0)
    torch.testing.assert_close(layers["proj"].square(), params["proj.weight"] + params["proj.bias"], rtol=1e-10, atol=0)


def test_embedding_scale_grad_by_freq_refused():
    model = Tokens()
    model.embed.scale_grad_by_freq = True
    with pytest.raises(ValueError, match="scale_grad_by_freq"):
        grad_norms(model, torch.tensor([[1, 2, 1]]), torch.tensor([0]))


class Scaled(nn.Module):
    """A raw nn.Parameter no layer rule sees, used inside its own module's forward."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 4))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.lin(x) * self.scale))


def test_raw_parameter_fallback_is_exact_or_refused_by_name():
    torch.manual_seed(6)
    model = Scaled().double()
    x, y = rand(5, 4, seed=7), torch.tensor([0, 1, 2, 0, 1])
    _, layers, params = check(model, x, y)
    torch.testing.assert_close(layers["(root)"].square(), params["scale"], rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match=r"no per-layer rule covers the parameters \['scale'\]"):
        grad_norms(model, x, y, fallback=False)


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_both_layouts(batch_first):
    class Attend(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            h = x if batch_first else x.transpose(0, 1)
            h, _ = self.attn(h, h, h)
            h = h if batch_first else h.transpose(0, 1)
            return self.head(h.mean(1))

    torch.manual_seed(8)
    _, layers, params = check(Attend().double(), rand(4, 5, 8, seed=9), torch.tensor([0, 1, 2, 1]))
    own = sum(v for k, v in params.items() if k.startswith("attn."))  # in- and out-projection together
    torch.testing.assert_close(layers["attn"].square(), own, rtol=1e-10, atol=0)


def _bn_stats(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


@requires_torchvision
@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap over CPU attention kernels
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "vit"])
def test_torchvision_models_at_32px_float64(arch):
    torch.manual_seed(10)
    if arch == "vit":
        model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                     hidden_dim=16, mlp_dim=32, num_classes=10)
        nn.init.normal_(model.heads.head.weight, std=0.1)  # torchvision zero-initialises the head
    else:
        model = _bn_stats(getattr(torchvision.models, arch)(num_classes=10))
    model = model.double()
    x, y = rand(3, 3, 32, 32, seed=11), torch.tensor([1, 5, 9])
    got, _, _ = check(model, x, y)
    assert float((got.max() - got.min()) / got.max()) > 1e-3  # the norms differ between samples


@requires_torchvision
def test_batch_invariance_and_state_untouched():
    torch.manual_seed(12)
    model = _bn_stats(torchvision.models.resnet18(num_classes=5)).double().train()
    x, y = rand(4, 3, 32, 32, seed=13), torch.tensor([0, 1, 2, 3])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    whole = grad_norms(model, x, y)
    alone = torch.cat([grad_norms(model, x[i:i + 1], y[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(whole, alone, rtol=1e-12, atol=0)
    assert model.training and all(m.training for m in model.modules())  # modes restored
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm statistics unmoved


def test_frozen_parameters_are_left_out():
    torch.manual_seed(14)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    model[0].requires_grad_(False)
    model[4].bias.requires_grad_(False)
    x, y = rand(4, 5, seed=15), torch.tensor([0, 1, 2, 0])
    _, layers, _ = check(model, x, y)
    assert set(layers) == {"2", "4"}
    for p in model.parameters():
        p.requires_grad_(False)
    assert torch.equal(grad_norms(model, x, y), torch.zeros(4, dtype=torch.float64))


def test_regression_loss_and_reduced_loss_refused():
    torch.manual_seed(16)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    x, y = rand(5, 3, seed=17), rand(5, 1, seed=18)

    def mse(out, target):
        return (out - target).square().sum(1)

    check(model, x, y, loss_fn=mse)
    with pytest.raises(ValueError, match="one loss per sample"):
        grad_norms(model, x, y, loss_fn=F.mse_loss)


def test_train_mode_batch_norm_refused_and_eval_mode_by_default():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).train()
    x, y = torch.randn(3, 3, 6, 6), torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match=r"BatchNorm '1' is in training mode.*per-sample gradient is not defined"):
        grad_norms(model, x, y, train_mode=True)
    assert model.training
    grad_norms(model, x, y)  # eval mode for the pass
    model[1] = nn.BatchNorm2d(4, track_running_stats=False)
    with pytest.raises(ValueError, match="track_running_stats=False"):
        grad_norms(model, x, y)
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_tied_and_foreign_used_weights_refused():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(7, 4)
            self.out = nn.Linear(4, 7, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, ids):
            return self.out(self.embed(ids).mean(1))

    with pytest.raises(ValueError, match="tied weights"):
        grad_norms(Tied(), torch.tensor([[1, 2]]), torch.tensor([3]))

    class Borrow(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 3)

        def forward(self, x):
            return self.b(F.linear(self.a(x), self.a.weight))  # a's weight used outside a's forward

    with pytest.raises(ValueError, match="parameter 'a.weight' is used by an op outside the forward"):
        grad_norms(Borrow(), torch.randn(2, 4), torch.tensor([0, 1]))


def test_input_changed_in_place_after_use_refused():
    class Mutate(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 3)

        def forward(self, x):
            h = self.a(x)
            out = self.b(h)
            h.mul_(2)  # b's recorded input no longer is what b saw
            return out + h[:, :3]

    with pytest.raises(RuntimeError, match="input of module 'b' was modified in place"):
        grad_norms(Mutate(), torch.randn(2, 4), torch.tensor([0, 1]))


def test_bad_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        grad_norms(nn.Linear(2, 2), torch.randn(1, 2), torch.tensor([0]), mode="fast")


# -- GraNd / EL2N over initialisations, the scoring pass and the strategy ----------------------

def _digits(n=60):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data[:n], dtype=torch.float32) / 16
    return torch.utils.data.TensorDataset(x, torch.tensor(d.target[:n]))


def _mlp():
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def test_grand_over_initialisations_is_the_mean_of_exact_norms():
    from datadiet.scores import grand
    from datadiet._seeds import derive_seed, seeded_global_rng

    data = _digits()
    out = grand(_mlp, data, inits=3, epochs=0, seed=5, batch_size=16)
    assert out.per_init.shape == (3, 60) and out.mean.shape == out.std.shape == (60,)
    x, y = data.tensors
    for k in range(3):  # each initialisation's row is grad_norms of that initialisation, in dataset order
        with seeded_global_rng(derive_seed(5, 31, k)):
            model = _mlp()
        torch.testing.assert_close(out.per_init[k], grad_norms(model, x, y), rtol=1e-5, atol=1e-6)
    assert not torch.equal(out.per_init[0], out.per_init[1])  # different initialisations
    assert torch.equal(grand(_mlp, data, inits=3, seed=5, batch_size=16).per_init, out.per_init)  # same seed
    last = grand(_mlp, data, inits=1, scope="last_layer", seed=5, batch_size=16).per_init[0]
    with seeded_global_rng(derive_seed(5, 31, 0)):
        model = _mlp()
    h = model[1](model[0](x))  # the head's inputs
    err = (torch.softmax(model(x), 1) - F.one_hot(y, 10)).norm(dim=1)
    torch.testing.assert_close(last, err * (h.square().sum(1) + 1).sqrt(), rtol=1e-5, atol=1e-6)  # not EL2N


def test_grand_and_el2n_with_training_epochs_and_errors():
    from datadiet.scores import el2n, grand

    data = _digits()
    trained = el2n(_mlp, data, inits=2, epochs=2, seed=1, batch_size=16, lr=0.1)
    untrained = el2n(_mlp, data, inits=2, epochs=0, seed=1, batch_size=16)
    assert trained.mean.mean() < untrained.mean.mean()  # training lowers the errors
    assert torch.equal(el2n(_mlp, data, inits=2, epochs=2, seed=1, batch_size=16, lr=0.1).per_init,
                       trained.per_init)
    calls = []
    grand(_mlp, data, inits=2, epochs=1, train_fn=lambda m, k: calls.append(k), batch_size=30)
    assert calls == [0, 1]
    with pytest.raises(ValueError, match="inits must be an int >= 1"):
        grand(_mlp, data, inits=0)
    with pytest.raises(ValueError, match="scope must be one of"):
        grand(_mlp, data, scope="all")
    with pytest.raises(TypeError, match="unknown options \\['lr_decay'\\]"):
        el2n(_mlp, data, lr_decay=0.1)


def test_grand_strategy_full_scope_through_the_trainer(tmp_path):
    from datadiet.train.config import TrainConfig
    from datadiet.train.trainer import Trainer

    def run(scope):
        config = TrainConfig(strategy="grand", fraction=0.3, epochs=2, batch_size=64, progress=False,
                             strategy_params={"scope": scope, "pretrain_epochs": 0, "warm": 0.0},
                             out=str(tmp_path / scope))
        trainer = Trainer(config)
        summary = trainer.fit()
        return trainer, summary

    full, summary = run("full")
    assert summary["selections"][0]["size"] > 0
    table_full = full.driver.score(grad_scope="full")
    table_last = full.driver.score()
    assert not torch.allclose(table_full.grad_norm, table_last.grad_norm)
    assert bool((table_last.grad_norm <= table_full.grad_norm * (1 + 1e-5) + 1e-6).all())
    with pytest.raises(ValueError, match="scope must be one of"):
        Trainer(TrainConfig(strategy="grand", fraction=0.3, epochs=1, progress=False,
                            strategy_params={"scope": "everything"}, out=str(tmp_path / "bad")))


@requires_torchvision
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_cuda_matches_cpu_float64(backend):
    torch.manual_seed(20)
    model = _bn_stats(torchvision.models.resnet18(num_classes=10)).double()
    x, y = rand(4, 3, 32, 32, seed=21), torch.tensor([1, 2, 3, 4])
    want = grad_norms(model, x, y)
    model = model.float().cuda()
    got = grad_norms(model, x.float().cuda(), y.cuda(), backend=backend, mode="instantiate")
    torch.testing.assert_close(got.double().cpu(), want, rtol=1e-4, atol=0)
    assert torch.equal(got, grad_norms(model, x.float().cuda(), y.cuda(), backend=backend, mode="instantiate"))



# -- the review's cases: nothing missed silently ----------------------------------------------------

def test_fallback_module_called_twice_sums_its_gradients_before_the_norm():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.scaled = Scaled()

        def forward(self, x):
            return self.scaled(x) + self.scaled(x.flip(1))

    torch.manual_seed(22)
    check(Twice().double(), rand(5, 4, seed=23), torch.tensor([0, 1, 2, 0, 1]))


def test_inputs_requiring_grad_and_captured_leaves():
    torch.manual_seed(24)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = rand(4, 4, seed=25), torch.tensor([0, 1, 2, 0])
    want = vmap_grad_norms(model, x, y)
    torch.testing.assert_close(grad_norms(model, x.clone().requires_grad_(), y), want, rtol=1e-10, atol=0)

    class Captured(nn.Module):  # a tensor requiring grad (not a parameter) before the first layer
        def __init__(self):
            super().__init__()
            self.ext = torch.linspace(0.5, 1.5, 4, dtype=torch.float64).requires_grad_()
            self.body = model

        def forward(self, x):
            return self.body(x * self.ext)

    wrapped = Captured()
    torch.testing.assert_close(grad_norms(wrapped, x, y), vmap_grad_norms(wrapped, x, y), rtol=1e-10, atol=0)


def test_a_submodule_called_module_is_not_a_wrapper_and_user_hooks_run_after_ours():
    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Linear(4, 5)
            self.head = nn.Linear(5, 3)

        def forward(self, x):
            return self.head(torch.tanh(self.module(x)))

    torch.manual_seed(26)
    model = Named().double()
    x, y = rand(4, 4, seed=27), torch.tensor([0, 1, 2, 0])
    _, layers, _ = check(model, x, y)
    assert set(layers) == {"module", "head"}
    model.module.register_forward_hook(lambda m, a, out: out * 3)  # changes the output after the layer
    check(model, x, y)


def test_sequence_first_layouts_are_refused():
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0)  # batch_first=False
    with pytest.raises(ValueError, match="batch_first=False"):
        grad_norms(nn.Sequential(layer), torch.randn(5, 3, 8), torch.zeros(3, dtype=torch.long),
                   loss_fn=lambda out, t: out.square().sum((0, 2)))

    class Flatten(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x):
            return self.lin(x.reshape(-1, 4)).reshape(x.shape[0], -1)

    with pytest.raises(ValueError, match="batch in dim 0"):
        grad_norms(Flatten(), torch.randn(3, 2, 4), torch.tensor([0, 1, 2]))


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_batch_first_transformer_layer_and_parameter_list():
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
            self.gates = nn.ParameterList([nn.Parameter(torch.linspace(0.5, 1.5, 8)) for _ in range(2)])
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            h = self.layer(x * self.gates[0]) * self.gates[1]
            return self.head(h.mean(1))

    torch.manual_seed(28)
    _, layers, params = check(Encoder().double(), rand(4, 5, 8, seed=29), torch.tensor([0, 1, 2, 0]))
    torch.testing.assert_close(layers["(root)"].square(), params["gates.0"] + params["gates.1"], rtol=1e-10, atol=0)


def test_a_parameter_used_in_the_loss_is_refused():
    model = nn.Linear(4, 3)
    temperature = nn.Parameter(torch.tensor(2.0))
    model.temperature = temperature
    with pytest.raises(ValueError, match="parameter 'temperature' is used by an op outside"):
        grad_norms(model, torch.randn(2, 4), torch.tensor([0, 1]),
                   loss_fn=lambda out, y: F.cross_entropy(out / model.temperature, y, reduction="none"))


def test_a_shared_float_input_stays_shared_and_float_padding_masks_split():
    class Positional(nn.Module):  # a raw parameter mixed with a [T, D] table shared by the batch
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 4))
            self.head = nn.Linear(4, 3)

        def forward(self, x, table):
            return self.head(torch.tanh((x + table) * self.scale).mean(1))

    torch.manual_seed(30)
    model = Positional().double()
    x, table, y = rand(4, 5, 4, seed=31), rand(5, 4, seed=32), torch.tensor([0, 1, 2, 0])  # [T, D], T != B
    from torch.func import functional_call, grad, vmap  # the oracle, with the table closed over

    params = {n: p.detach() for n, p in model.named_parameters()}
    per = vmap(grad(lambda ps, xi, yi: F.cross_entropy(functional_call(model, ps, (xi[None], table)), yi[None])),
               in_dims=(None, 0, 0))(params, x, y)
    exact = sum(g.flatten(1).square().sum(1) for g in per.values()).sqrt()
    torch.testing.assert_close(grad_norms(model, (x, table), y), exact, rtol=1e-10, atol=0)

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x, pad):
            mask = torch.zeros(pad.shape, dtype=x.dtype).masked_fill(pad, float("-inf"))  # float, built inside
            return self.head(self.attn(x, x, x, key_padding_mask=mask)[0].mean(1))

    torch.manual_seed(33)
    masked = Masked().double()
    xs, pad = rand(3, 5, 8, seed=34), torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    got = grad_norms(masked, (xs, pad), torch.tensor([0, 1, 2]))
    alone = torch.cat([grad_norms(masked, (xs[i:i + 1], pad[i:i + 1]), torch.tensor([i])) for i in range(3)])
    torch.testing.assert_close(got, alone, rtol=1e-10, atol=0)


def loop_grad_norms(model, x, y):
    """The plainest oracle: one eval-mode backward pass per sample."""
    model.eval()
    out = []
    for i in range(len(y)):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        out.append(sum(p.grad.square().sum() for p in model.parameters() if p.grad is not None).sqrt())
    model.zero_grad(set_to_none=True)
    return torch.stack(out)


def test_a_frozen_sequence_first_module_is_not_refused():
    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(4, 4).requires_grad_(False)  # batch_first=False, frozen
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return self.head(self.gru(x.transpose(0, 1))[0].transpose(0, 1).mean(1))

    torch.manual_seed(35)
    model = Recurrent().double()
    x, y = rand(3, 5, 4, seed=36), torch.tensor([0, 1, 2])
    got, layers = grad_norms(model, x, y, per_layer=True)
    assert set(layers) == {"head"}
    torch.testing.assert_close(got, loop_grad_norms(model, x, y), rtol=1e-10, atol=0)


def test_embedding_norms_keep_a_small_sample_next_to_large_ones():
    emb = nn.Embedding(6, 3).double()
    ids = torch.tensor([[1, 2, 1, 3], [1, 1, 4, 0]])
    g = torch.stack([torch.full((4, 3), 1e3, dtype=torch.float64), torch.full((4, 3), 1e-6, dtype=torch.float64)])
    from datadiet.scores.layer_rules import embedding_pieces, sqnorm

    got = sqnorm(embedding_pieces(emb, ids, g, {"weight"})["weight"], "auto", "auto")
    want = torch.tensor([(2e3) ** 2 * 3 + (1e3) ** 2 * 3 * 2, (2e-6) ** 2 * 3 + (1e-6) ** 2 * 3 * 2],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
