"""Exact per-sample gradient norms over a whole model, at the memory of one backward pass.

``grad_norms(model, inputs, targets)`` returns ``‖∂ℓ_i/∂θ‖`` for every sample i of a batch, θ every
trainable parameter, ℓ_i the sample's own loss (so a norm does not depend on the batch it came
in). No per-sample gradient is materialised:

- A forward hook on each layer keeps its input and puts a tensor hook on its output (full
  backward hooks break on in-place ReLU); when the output's gradient arrives in the backward
  pass, the layer's squared norm is computed from (input, output gradient) by the rules of
  ``layer_rules`` and its temporaries are dropped, so one layer's exist at a time. Layers add
  in squares.
- Every parameter is frozen for the pass, float inputs enter as fresh roots (and the outputs of
  layers on integer inputs, such as embeddings, become roots), and the backward pass asks for the
  gradients of every leaf the loss reaches: no weight-gradient GEMM runs, and no tensor requiring
  grad from elsewhere can keep a layer's output gradient from being computed.
- Parameters no rule covers (raw ``nn.Parameter``s such as a ViT's class token and position
  embedding, ``nn.MultiheadAttention``'s in-projection, layers of other types) are covered per
  owning module with ``torch.func``: ``vmap`` over the batch of the ``vjp`` of that module's
  forward w.r.t. only those parameters, from the inputs and output gradients the hooks recorded.
  ``fallback=False`` refuses them instead, naming them; tied weights (one parameter owned by
  several modules), parametrized weights and a parameter an op reads outside its module's forward
  (or in the loss) are always refused — never a silently partial norm.
- BatchNorm in train mode has no per-sample gradient (a sample's output depends on the batch):
  the pass runs in eval mode and restores every module's mode afterwards; ``train_mode=True``
  keeps the modes (dropout as set by the caller) and refuses a BatchNorm using batch statistics.

Every layer must see the batch in dim 0 (checked; sequence-first transformers and RNNs are
refused, a standalone ``nn.MultiheadAttention`` with ``batch_first=False`` is handled). Not for
concurrent calls on one model: the pass changes its flags and hooks while it runs.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from datadiet._dist import unwrap
from datadiet.scores.layer_rules import MODES, check_batch_norm, merge, rule_for, sqnorm

COVERED_BY_RULES = frozenset({"weight", "bias"})


@dataclass
class _Call:
    """One forward call of a planned module: its inputs, the shapes of its output's pytree leaves
    and the gradients of those that need one. No output tensor is kept: its autograd node holds
    the hooks that hold this call, a cycle Python's collector cannot see through."""

    args: tuple
    kwargs: dict
    versions: list
    shapes: list  # each output leaf's shape (None for non-tensors)
    on_path: list  # per flattened input: whether it was on the batch's gradient path (required grad)
    grads: dict = field(default_factory=dict)  # leaf index -> gradient
    waiting: int = 0


@dataclass
class _Site:
    name: str
    module: nn.Module
    params: tuple[str, ...]  # the module's own trainable parameters this site covers
    rule: Optional[Callable]  # None: torch.func fallback
    calls: list = field(default_factory=list)


def grad_norms(model: nn.Module, inputs, targets: torch.Tensor, loss_fn: Optional[Callable] = None, *,
               mode: str = "auto", per_layer: bool = False, train_mode: bool = False, fallback: bool = True,
               backend: str = "auto") -> Union[torch.Tensor, tuple[torch.Tensor, dict]]:
    """Exact ``‖∂ℓ_i/∂θ‖`` over every trainable parameter θ of ``model``, for each sample i.

    Args:
        model: any ``nn.Module`` (a (Distributed)DataParallel wrapper is unwrapped). Frozen
            parameters (``requires_grad=False``) are left out of the norm.
        inputs: the batch: a tensor, a tuple (``model(*inputs)``) or a mapping (``model(**inputs)``).
            A float tensor with B rows in dim 0 is taken as per-sample, any other as shared by
            the batch (pass a batch-independent table with B rows as a buffer instead).
        targets: what ``loss_fn`` compares the outputs with.
        loss_fn: ``loss_fn(outputs, targets) -> [B]`` per-sample losses; default cross-entropy
            with ``reduction="none"``. A reduced (scalar) loss is refused: its gradients would be
            scaled by 1/B and coupled through the batch.
        mode: ``"auto"`` picks per layer and input shape between ``"ghost"`` (Gram matrices,
            O(T²(d+p))) and ``"instantiate"`` (the fused ``per_sample_grad_sqnorm`` kernel,
            O(T·p·d)); either can be forced.
        per_layer: also return ``{module name: [B] norm of that module's own parameters}``.
        train_mode: keep the modules' train/eval modes (default: eval mode for the pass).
        fallback: cover parameters no rule sees with ``torch.func`` (default) or refuse them.
        backend: the kernel backend of ``per_sample_grad_sqnorm``.

    Returns ``[B]`` norms (float32; float64 for a float64 model), or ``(norms, per_layer)``.
    """
    if mode not in MODES:
        raise ValueError(f"grad_norms: mode must be one of {MODES}, got {mode!r}")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("grad_norms: called under torch.inference_mode(), where no gradient can be taken; call "
                           "it outside (torch.no_grad() around it is fine)")
    model = unwrap(model)
    # Per-sample float inputs (B rows) enter as fresh roots (a copy of a leaf), the others detached:
    # gradients flow only to this pass's roots, and every float tensor computed from the batch
    # requires grad, while a batch-independent input (a [T, D] table) stays shared.
    B = _rows(targets, inputs)
    inputs = tree_map(lambda t: _as_root(t) if _per_sample_float(t, B) else _detached(t), inputs)
    args, kwargs = ((), dict(inputs)) if isinstance(inputs, Mapping) else \
        (tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,), {})
    loss_fn = loss_fn or functools.partial(F.cross_entropy, reduction="none")
    params = [p for p in model.parameters() if p.requires_grad]
    acc = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
    trainable = {id(p) for p in params}
    with _scoring_modes(model, train_mode), _frozen(params), torch.enable_grad():
        sites = _plan(model, trainable, fallback)
        run = _Pass(sites, mode, backend, acc)
        with run.hooked():
            with run.watching_parameters():  # the loss too: a parameter used there is refused
                outputs = model(*args, **kwargs)
                losses = loss_fn(outputs, targets)
            run.begin_backward(_batch_size(losses, tree_flatten((args, kwargs))[0]), losses.device)
            leaves = _reachable_leaves(losses) if losses.requires_grad else []
            if leaves:
                torch.autograd.grad(losses.sum(), leaves, allow_unused=True)
        run.finish()
    norms = run.total.sqrt()
    if per_layer:
        return norms, {name: sq.sqrt() for name, sq in run.layers.items()}
    return norms


def _reachable_leaves(losses: torch.Tensor) -> list:
    """Every leaf the loss depends on: the roots this pass made, and any other tensor requiring
    grad the forward captured. Asking the backward pass for all of them reaches every hooked
    output the loss depends on; the parameters are frozen, so none is among them."""
    seen, stack, leaves = set(), [losses.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad
        if variable is not None:
            leaves.append(variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


def _batch_size(losses, inputs) -> int:
    if not isinstance(losses, torch.Tensor) or losses.dim() != 1:
        raise ValueError(f"grad_norms: loss_fn must return one loss per sample, shape [B]; got "
                         f"{tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__} "
                         "(use reduction='none': a mean-reduced loss scales every gradient by 1/B)")
    B = losses.shape[0]
    first = next((t for t in inputs if isinstance(t, torch.Tensor)), None)
    if first is not None and first.dim() > 0 and first.shape[0] != B:
        raise ValueError(f"grad_norms: loss_fn returned {B} losses for a batch of {first.shape[0]} inputs")
    return B


@contextlib.contextmanager
def _scoring_modes(model: nn.Module, train_mode: bool):
    modes = [(m, m.training) for m in model.modules()]
    if not train_mode:
        model.eval()
    try:
        for name, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                check_batch_norm(m, name)
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def _frozen(params: list):
    """No parameter requires grad during the pass: the backward pass computes no weight gradient."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _plan(model: nn.Module, trainable: set, fallback: bool) -> list[_Site]:
    """One site per module owning parameters of ``trainable`` (ids): a rule when one covers them
    all, else the ``torch.func`` fallback (or a refusal naming them). Parameters held in an
    ``nn.ParameterList`` / ``ParameterDict`` (never called) belong to the module holding it."""
    modules = dict(model.named_modules())
    owners: dict[int, list[str]] = {}
    for mname, m in modules.items():
        for pname, p in m.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(f"{mname}.{pname}" if mname else pname)
    owned: dict[str, list[str]] = {}  # module name -> its parameters, by names relative to it
    for mname, m in modules.items():
        holder = mname
        while isinstance(modules[holder], (nn.ParameterList, nn.ParameterDict)) and holder:
            holder = holder.rpartition(".")[0]
        prefix = mname[len(holder):].lstrip(".")
        names = [f"{prefix}.{n}" if prefix else n for n, p in m.named_parameters(recurse=False) if id(p) in trainable]
        if isinstance(m, nn.MultiheadAttention):
            # Its forward reads out_proj's weight directly (out_proj itself is never called):
            # the in- and out-projections are covered together, by the fallback.
            names += [f"out_proj.{n}" for n, p in m.out_proj.named_parameters(recurse=False) if id(p) in trainable]
        if names:
            owned.setdefault(holder, []).extend(names)
    for mname, m in modules.items():
        if isinstance(m, nn.MultiheadAttention):
            owned.pop(f"{mname}.out_proj" if mname else "out_proj", None)
    sites, refused = [], []
    for mname, own in owned.items():
        m = modules[mname]
        full = [f"{mname}.{n}" if mname else n for n in own]
        tied = [owners[id(m.get_parameter(n))] for n in own if len(owners[id(m.get_parameter(n))]) > 1]
        if tied:
            raise ValueError(f"grad_norms: tied weights {tied[0]}: one parameter used by several modules has a "
                             "per-sample gradient summed over its uses, which per-module norms cannot combine; "
                             "untie them or freeze them (requires_grad=False)")
        if isinstance(m, parametrize.ParametrizationList):
            raise ValueError(f"grad_norms: parametrized parameters {full} are used through their parametrization's "
                             "forward, which no hook sees; remove the parametrization (e.g. "
                             "torch.nn.utils.parametrize.remove_parametrizations) before scoring")
        rule = rule_for(m)
        if rule is not None and set(own) <= COVERED_BY_RULES:
            sites.append(_Site(mname, m, tuple(own), rule))
        elif fallback:
            sites.append(_Site(mname, m, tuple(own), None))
        else:
            refused += full
    if refused:
        raise ValueError(f"grad_norms: no per-layer rule covers the parameters {refused} (raw nn.Parameters, "
                         "nn.MultiheadAttention's in-projection, or layer types other than Linear, Conv1d/2d, "
                         "Embedding, LayerNorm, GroupNorm and BatchNorm); pass fallback=True to cover them with "
                         "torch.func, or freeze them")
    covered = [site.name for site in sites]
    for mname, m in modules.items():
        if not any(n == mname or n.startswith(f"{mname}.") or not mname for n in covered):
            continue  # holds no trainable parameter: its layout is its own business (a frozen GRU)
        layer = isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))
        if (getattr(m, "batch_first", True) is False and not isinstance(m, nn.MultiheadAttention)) or \
                (layer and not m.self_attn.batch_first):
            raise ValueError(f"grad_norms: module {mname or '(root)'!r} ({type(m).__name__}) has batch_first=False: "
                             "its layers see [T, B, ...] tensors, and per-sample norms need the batch in dim 0 "
                             "(build it with batch_first=True)")
    return sites


class _Pass:
    """The hooks of one ``grad_norms`` call and the squared norms they accumulate."""

    def __init__(self, sites: list[_Site], mode: str, backend: str, acc: torch.dtype) -> None:
        self.sites, self.mode, self.backend, self.acc = sites, mode, backend, acc
        self.layers: dict[str, torch.Tensor] = {}
        self.total: Optional[torch.Tensor] = None
        self.suspended = False  # True while the fallback re-runs modules under torch.func

    @contextlib.contextmanager
    def hooked(self):
        # Prepended: a user's hook that changes the output runs after ours, so the gradient we
        # take is the one at the layer's own output.
        handles = [s.module.register_forward_hook(functools.partial(self._on_forward, s), with_kwargs=True,
                                                  prepend=True) for s in self.sites]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @contextlib.contextmanager
    def watching_parameters(self):
        """Refuses a covered parameter read by an op outside its site's module call (a weight
        another module uses directly): its gradient would escape the module's norm."""
        owners = {id(s.module.get_parameter(n)): (s, n) for s in self.sites for n in s.params}
        executing: dict[int, int] = {}

        def enter(module, args):
            executing[id(module)] = executing.get(id(module), 0) + 1

        def leave(module, args, output):
            executing[id(module)] -= 1

        handles = [h for s in self.sites for h in (s.module.register_forward_pre_hook(enter),
                                                   s.module.register_forward_hook(leave))]
        try:
            with _ParameterUse(owners, executing):
                yield
        finally:
            for h in handles:
                h.remove()

    def begin_backward(self, B: int, device: torch.device) -> None:
        self.B = B
        self.total = torch.zeros(B, dtype=self.acc, device=device)

    def _on_forward(self, site: _Site, module, args, kwargs, output):
        if self.suspended:
            return None
        leaves, spec = tree_flatten(output)
        made_root = False
        for k, t in enumerate(leaves):
            # An output no earlier root leads to (the first layers, or a layer on token ids) becomes
            # a root: the backward pass is asked for the gradient of a leaf holding its value, and the
            # model goes on with a copy, so a later in-place op (ReLU(inplace=True)) leaves the leaf be.
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not t.requires_grad:
                root = t.detach().requires_grad_()  # kept alive by the copy's autograd node
                leaves[k] = root.clone()
                made_root = True
        on_path = [isinstance(t, torch.Tensor) and t.requires_grad for t in tree_flatten((args, kwargs))[0]]
        args, kwargs = tree_map(_detached, (args, kwargs))  # detach() shares the version counter
        inputs = tree_flatten((args, kwargs))[0]
        call = _Call(args, kwargs, [t._version if isinstance(t, torch.Tensor) else None for t in inputs],
                     [t.shape if isinstance(t, torch.Tensor) else None for t in leaves], on_path)
        for k, t in enumerate(leaves):
            if isinstance(t, torch.Tensor) and t.requires_grad:
                t.register_hook(functools.partial(self._on_grad, site, call, k))
                call.waiting += 1
        site.calls.append(call)
        return tree_unflatten(leaves, spec) if made_root else None

    def _on_grad(self, site: _Site, call: _Call, k: int, grad: torch.Tensor) -> None:
        call.grads[k] = grad
        call.waiting -= 1
        if site.rule is not None and all(c.waiting == 0 for c in site.calls):
            self._close(site)  # the layer's norm now; its inputs and gradients are dropped

    def finish(self) -> None:
        """Sites whose outputs got no gradient for some call, then the torch.func fallbacks."""
        if self.total is None:
            return
        for site in self.sites:
            if site.calls:
                self._close(site)

    def _close(self, site: _Site) -> None:
        calls = [c for c in site.calls if c.grads]
        site.calls = []
        if not calls:
            return
        for c in calls:
            _check_unchanged(site, c)
        # The backward pass may run under the caller's autocast: the norms are taken in the
        # accumulation dtype whatever it is.
        with torch.autocast(self.total.device.type, enabled=False):
            if site.rule is None:
                from datadiet.scores.func_fallback import fallback_sqnorm

                self.suspended = True
                try:
                    sq = fallback_sqnorm(site.module, site.params, calls, self.B, self.acc)
                finally:
                    self.suspended = False
            else:
                sq = self._rule_sqnorm(site, calls)
        sq = sq.detach()
        if sq.shape != (self.B,):
            raise ValueError(f"grad_norms: module {site.name or '(root)'!r} gave per-sample norms of shape "
                             f"{tuple(sq.shape)} for a batch of {self.B}: its inputs must have the batch in dim 0")
        self.total += sq.to(self.total.device)
        key = site.name or "(root)"
        self.layers[key] = self.layers[key] + sq if key in self.layers else sq

    def _rule_sqnorm(self, site: _Site, calls: list) -> torch.Tensor:
        pieces: dict[str, list] = {}
        with torch.no_grad():
            for c in calls:
                x = c.args[0] if c.args else next(iter(c.kwargs.values()))
                g = c.grads[0]
                if x.dim() == 0 or x.shape[0] != self.B or g.shape[0] != self.B:
                    raise ValueError(f"grad_norms: module {site.name or '(root)'!r} ({type(site.module).__name__}) "
                                     f"got an input of shape {tuple(x.shape)} for a batch of {self.B}: per-sample "
                                     "norms need the batch in dim 0 of every layer's input (no sequence-first "
                                     "layouts, no flattening of the batch into another dim)")
                for name, piece in site.rule(site.module, x, g, set(site.params)).items():
                    pieces.setdefault(name, []).append(piece)
            return sum(sqnorm(merge(ps), self.mode, self.backend).to(self.acc) for ps in pieces.values())


def _rows(targets, inputs) -> Optional[int]:
    """The batch size: the targets' rows, else the first tensor input's."""
    if isinstance(targets, torch.Tensor) and targets.dim() > 0:
        return targets.shape[0]
    first = next((t for t in tree_flatten(inputs)[0] if isinstance(t, torch.Tensor) and t.dim() > 0), None)
    return None if first is None else first.shape[0]


def _per_sample_float(x, B: Optional[int]) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() > 0 and x.shape[0] == B


def _as_root(x: torch.Tensor) -> torch.Tensor:
    return x.detach().requires_grad_().clone()  # the copy takes in-place ops the leaf would refuse


def _detached(x):
    return x.detach() if isinstance(x, torch.Tensor) else x


def _check_unchanged(site: _Site, call: _Call) -> None:
    inputs = tree_flatten((call.args, call.kwargs))[0]
    for t, version in zip(inputs, call.versions):
        if isinstance(t, torch.Tensor) and t._version != version:
            raise RuntimeError(f"grad_norms: the input of module {site.name or '(root)'!r} was modified in place after "
                               "the module read it, so its recorded input no longer is what the module saw; make the "
                               "later in-place op out of place (e.g. inplace=False)")


class _ParameterUse(TorchFunctionMode):
    """Checks every op's tensor arguments for a covered parameter whose module is not running."""

    def __init__(self, owners: dict, executing: dict) -> None:
        super().__init__()
        self.owners, self.executing = owners, executing

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for a in (*args, *kwargs.values()):
            for t in (a if isinstance(a, (list, tuple)) else (a,)):
                self._check(t)
        return func(*args, **kwargs)

    def _check(self, t) -> None:
        owner = self.owners.get(id(t)) if isinstance(t, torch.Tensor) else None
        if owner is None:
            return
        site, name = owner
        if t is site.module.get_parameter(name) and not self.executing.get(id(site.module)):
            full = f"{site.name}.{name}" if site.name else name
            raise ValueError(f"grad_norms: parameter {full!r} is used by an op outside the forward of its module "
                             f"({type(site.module).__name__}), e.g. a weight shared with another module; its "
                             "per-sample gradient would not be attributed. Freeze it, or make the module that uses "
                             "it own it")
