"""topk_select against a plain-Python oracle and the torch reference: dtypes, shapes, ties, NaN,
layouts (1-D, rows, offsets, groups), non-contiguous input, opcheck and torch.compile."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import datadiet
from datadiet.ops import topk_select
from datadiet.reference import topk_select_reference
from select_helpers import oracle_topk, ragged_offsets

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def scores(n, dtype=torch.float32, seed=0, distinct=None):
    g = torch.Generator().manual_seed(seed)
    if distinct:  # heavy ties
        return torch.randint(0, distinct, (n,), generator=g).to(dtype)
    return torch.randn(n, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 7, 4097, 70001])  # 70001: the multi-threaded path
@pytest.mark.parametrize("largest", [True, False])
def test_matches_reference_and_torch_topk(n, dtype, largest):
    s = scores(n, dtype, seed=n)
    for k in sorted({0, min(1, n), n // 3, n}):
        got = topk_select(s, k, largest=largest)
        assert got.dtype == torch.int64 and got.shape == (k,)
        assert torch.equal(got, topk_select_reference(s, [0, n], [k], largest))
        want = torch.topk(s.float(), k, largest=largest, sorted=True).values
        assert torch.equal(s.float()[got], want)


@pytest.mark.parametrize("n", [5, 300, 5000, 100000])
def test_ties_go_to_the_lower_index(n):
    s = scores(n, distinct=3, seed=1)
    for largest in (True, False):
        k = max(1, n // 2)
        got = topk_select(s, k, largest=largest).tolist()
        if n <= 5000:
            assert got == oracle_topk(s, k, largest)
        assert got == topk_select_reference(s, [0, n], [k], largest).tolist()
    same = torch.zeros(n)
    assert topk_select(same, 4).tolist() == [0, 1, 2, 3]


def test_nan_ranks_last_and_signed_zeros_tie():
    s = torch.tensor([float("nan"), 1.0, -0.0, 0.0, float("-inf"), float("nan"), float("inf")])
    assert topk_select(s, 7).tolist() == [6, 1, 2, 3, 4, 0, 5]
    assert topk_select(s, 7, largest=False).tolist() == [4, 2, 3, 1, 6, 0, 5]
    assert topk_select(s, 7).tolist() == oracle_topk(s, 7, True)


def test_rows_return_indices_within_each_row():
    s = scores(6 * 50, seed=3).view(6, 50)
    got = topk_select(s, 7)
    assert got.shape == (6, 7)
    for r in range(6):
        assert got[r].tolist() == oracle_topk(s[r], 7, True)


def test_non_contiguous_input():
    base = scores(40 * 30, seed=4).view(40, 30)
    t = base.t()  # [30, 40], column-major
    assert torch.equal(topk_select(t, 5), topk_select(t.contiguous(), 5))
    strided = base.view(-1)[::3]
    assert topk_select(strided, 9).tolist() == oracle_topk(strided, 9, True)


def test_ragged_offsets_and_per_segment_k():
    sizes = [0, 1, 17, 5000, 70000, 3]
    ks = [0, 1, 5, 4999, 700, 3]
    offs = ragged_offsets(sizes)
    s = scores(offs[-1], seed=5, distinct=50)
    got = topk_select(s, ks, offsets=offs)
    assert torch.equal(got, topk_select_reference(s, offs, ks, True))
    pos = 0
    for (a, b), k in zip(zip(offs[:-1], offs[1:]), ks):
        if b - a <= 5000:
            assert [i - a for i in got[pos:pos + k].tolist()] == oracle_topk(s[a:b], k, True)
        pos += k
    assert torch.equal(topk_select(s, ks, offsets=torch.tensor(offs)), got)


def test_groups_select_per_class_budgets():
    g = torch.Generator().manual_seed(6)
    labels = torch.randint(0, 10, (3000,), generator=g)
    s = torch.randn(3000, generator=g)
    got = topk_select(s, 20, groups=labels)
    assert got.shape == (200,)
    for c in range(10):
        part = got[20 * c:20 * (c + 1)]
        members = (labels == c).nonzero().squeeze(1)
        assert (labels[part] == c).all()
        assert part.tolist() == members[oracle_topk(s[members], 20, True)].tolist()


def test_empty_and_full_selections_of_a_segment():
    s = scores(10)
    assert topk_select(s, [0, 10], offsets=[0, 0, 10]).tolist() == oracle_topk(s, 10, True)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([-2.0, -0.0, 0.0, 0.5, 1.0, 3.0, float("nan"), float("inf")]), max_size=60),
       st.integers(0, 60), st.booleans())
def test_property_matches_oracle(values, k, largest):
    s = torch.tensor(values, dtype=torch.float32)
    k = min(k, len(values))
    assert topk_select(s, k, largest=largest).tolist() == oracle_topk(s, k, largest)


def test_backends_agree():
    s = scores(3000, seed=7, distinct=100)
    want = topk_select(s, [10, 300], offsets=[0, 1000, 3000], backend="cpu")
    assert torch.equal(topk_select(s, [10, 300], offsets=[0, 1000, 3000], backend="torch"), want)


def test_opcheck_and_compile():
    s = scores(500, seed=8)
    torch.library.opcheck(torch.ops.datadiet.topk_select.default, (s, [0, 200, 500], [3, 40], True))
    fn = torch.compile(lambda x: topk_select(x, [3, 40], offsets=[0, 200, 500], backend="cpu"), fullgraph=True)
    assert torch.equal(fn(s), topk_select(s, [3, 40], offsets=[0, 200, 500]))


def test_exported_at_top_level():
    assert datadiet.topk_select is topk_select
