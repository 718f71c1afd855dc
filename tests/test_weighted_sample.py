"""weighted_sample: bit-identical to the reference, exact inclusion probabilities, zero weights,
draw order, layouts, seeds, opcheck and torch.compile."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from datadiet.ops import weighted_sample
from datadiet.reference import weighted_sample_reference
from datadiet.reference.select import philox4
from select_helpers import ragged_offsets

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def weights(n, dtype=torch.float32, seed=0, zero_frac=0.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n, generator=g) * 10
    if zero_frac:
        w[torch.rand(n, generator=g) < zero_frac] = 0
    return w.to(dtype)


def exact_probabilities(w: list[float], k: int) -> tuple[list[float], list[float]]:
    """Inclusion probability of each item in a k-draw without replacement, and P(first draw)."""
    total = sum(w)
    inclusion = [0.0] * len(w)
    for seq in itertools.permutations(range(len(w)), k):
        p, left = 1.0, total
        for i in seq:
            p *= w[i] / left
            left -= w[i]
        for i in seq:
            inclusion[i] += p
    return inclusion, [x / total for x in w]


def test_philox_known_answer():
    # Random123's kat_vectors: philox4x32_10, counter 0, key 0.
    words = [int(w[0]) for w in philox4(torch.tensor([0]), 0, 0)]
    assert words == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 4097, 70001])
def test_bit_identical_to_reference(n, dtype):
    w = weights(n, dtype, seed=n, zero_frac=0.2)
    positive = int((w > 0).sum())
    for seed in (0, 1, 2**63 + 5, -3):
        for k in sorted({0, 1, positive // 2, positive}):
            got = weighted_sample(w, k, seed=seed)
            assert got.shape == (k,) and got.dtype == torch.int64
            assert torch.equal(got, weighted_sample_reference(w, [0, n], [k], seed))
            assert len(set(got.tolist())) == k and bool((w[got] > 0).all())


def test_inclusion_frequencies_match_exact_probabilities():
    w = [1.0, 2.0, 3.0, 4.0, 0.0]
    inclusion, first = exact_probabilities(w, 2)
    rows = 40000
    got = weighted_sample(torch.tensor(w).repeat(rows, 1), 2, seed=11)  # each row its own Philox counters
    counts = torch.bincount(got.reshape(-1), minlength=5).double() / rows
    firsts = torch.bincount(got[:, 0], minlength=5).double() / rows
    for p_hat, p in zip(counts.tolist(), inclusion):
        assert abs(p_hat - p) <= 5 * (p * (1 - p) / rows) ** 0.5 + 1e-12
    for p_hat, p in zip(firsts.tolist(), first):
        assert abs(p_hat - p) <= 5 * (p * (1 - p) / rows) ** 0.5 + 1e-12
    assert counts[4] == 0


def test_inclusion_frequencies_over_seeds():
    w = torch.tensor([0.5, 1.0, 4.0, 2.5])
    inclusion, _ = exact_probabilities(w.tolist(), 3)
    runs = 3000
    counts = torch.zeros(4)
    for seed in range(runs):
        counts[weighted_sample(w, 3, seed=seed)] += 1
    for p_hat, p in zip((counts / runs).tolist(), inclusion):
        assert abs(p_hat - p) <= 5 * (p * (1 - p) / runs) ** 0.5 + 1e-12


def test_draw_order_prefix_property():
    w = weights(5000, seed=3)
    full = weighted_sample(w, 400, seed=9)
    for j in (1, 17, 399):
        assert torch.equal(weighted_sample(w, j, seed=9), full[:j])


def test_seeds_change_the_sample_and_repeat_it():
    w = weights(1000, seed=4)
    a, b = weighted_sample(w, 50, seed=1), weighted_sample(w, 50, seed=2)
    assert not torch.equal(a, b)
    assert torch.equal(a, weighted_sample(w, 50, seed=1))


def test_indices_beyond_two_to_the_24():
    n = 2**24 + 7
    w = torch.zeros(n)
    w[-5:] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    got = weighted_sample(w, 5, seed=0)
    assert sorted(got.tolist()) == list(range(n - 5, n))


def test_layouts_rows_offsets_groups():
    w = weights(4 * 300, seed=5, zero_frac=0.1)
    rows = weighted_sample(w.view(4, 300), 20, seed=3)
    assert rows.shape == (4, 20)
    flat = weighted_sample(w, [20] * 4, offsets=[0, 300, 600, 900, 1200], seed=3)
    assert torch.equal(rows + torch.arange(4).unsqueeze(1) * 300, flat.view(4, 20))
    sizes = [0, 3, 800, 397]
    offs = ragged_offsets(sizes)
    got = weighted_sample(w, [0, 2, 100, 50], offsets=offs, seed=8)
    assert torch.equal(got, weighted_sample_reference(w, offs, [0, 2, 100, 50], 8))
    labels = torch.arange(1200) % 3
    per_class = weighted_sample(w, 10, groups=labels, seed=1)
    assert [int(labels[i]) for i in per_class] == [0] * 10 + [1] * 10 + [2] * 10


def test_float64_weights_are_rounded_to_float32():
    w = weights(100, seed=6)
    assert torch.equal(weighted_sample(w.double(), 10, seed=0), weighted_sample(w, 10, seed=0))


def test_backends_agree():
    w = weights(2000, seed=7, zero_frac=0.3)
    want = weighted_sample(w, [5, 300], offsets=[0, 500, 2000], seed=4, backend="cpu")
    assert torch.equal(weighted_sample(w, [5, 300], offsets=[0, 500, 2000], seed=4, backend="torch"), want)


def test_opcheck_and_compile():
    w = weights(300, seed=8)
    torch.library.opcheck(torch.ops.datadiet.weighted_sample.default, (w, [0, 100, 300], [5, 20], 7))
    fn = torch.compile(lambda x: weighted_sample(x, 25, seed=7, backend="cpu"), fullgraph=True)
    assert torch.equal(fn(w), weighted_sample(w, 25, seed=7))


def test_non_contiguous_weights():
    base = weights(60 * 40, seed=9).view(60, 40)
    strided = base.t()[3]  # stride 40
    assert torch.equal(weighted_sample(strided, 12, seed=2), weighted_sample(strided.contiguous(), 12, seed=2))
    assert torch.equal(weighted_sample(base.t(), 5, seed=2), weighted_sample(base.t().contiguous(), 5, seed=2))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([0.0, 1e-30, 0.5, 1.0, 3.0, 1e30]), min_size=1, max_size=50),
       st.integers(0, 2**64 - 1), st.data())
def test_property_matches_reference(values, seed, data):
    w = torch.tensor(values, dtype=torch.float32)
    k = data.draw(st.integers(0, int((w > 0).sum())))
    got = weighted_sample(w, k, seed=seed)
    assert torch.equal(got, weighted_sample_reference(w, [0, len(values)], [k], seed))
    assert bool((w[got] > 0).all())
