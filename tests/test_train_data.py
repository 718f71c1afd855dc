"""The training loop's data plumbing: samples carry their index, selections are validated, and the
selection sampler is deterministic per (seed, epoch), independent of the global RNG, shards
across ranks like DistributedSampler and resumes part-way through an epoch."""

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from datadiet.train import IndexedDataset, Selection, SelectionSampler


def subset(n=50, k=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Selection(torch.randperm(n, generator=g)[:k], torch.rand(k, generator=g) + 0.5)


def test_indexed_dataset_carries_the_index_through_a_loader():
    x, y = torch.randn(10, 3), torch.arange(10) % 3
    loader = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=4, shuffle=False)
    xs, ys, idx = next(iter(loader))
    assert idx.tolist() == [0, 1, 2, 3] and torch.equal(xs, x[:4]) and torch.equal(ys, y[:4])


@pytest.mark.parametrize("selection, pattern", [
    (Selection(torch.tensor([[0, 1]])), r"indices must be a 1-D integer tensor"),
    (Selection(torch.tensor([0.0, 1.0])), r"indices must be a 1-D integer tensor"),
    (Selection(torch.tensor([0, 50])), r"index 50 is outside the dataset of 50 samples"),
    (Selection(torch.tensor([-1, 3])), r"index -1 is outside"),
    (Selection(torch.tensor([4, 4])), r"indices must be unique"),
    (Selection(torch.tensor([1, 2]), torch.ones(3)), r"weights must be a tensor of shape \(2,\)"),
    (Selection(torch.tensor([1, 2]), torch.tensor([1.0, 0.0])), r"weights\[1\] = 0.0 for sample 2"),
    (Selection(torch.tensor([1, 2]), torch.tensor([float("nan"), 1.0])), r"weights\[0\] = nan for sample 1"),
])
def test_bad_selections_are_refused_by_name(selection, pattern):
    with pytest.raises(ValueError, match=pattern):
        selection.validate(50)


def test_weight_table_spreads_the_weights_over_the_dataset():
    s = subset().validate(50)
    table = s.weight_table(50)
    assert torch.equal(table[s.indices], s.weights) and int((table > 0).sum()) == len(s)
    assert torch.equal(Selection.full(4).weight_table(4), torch.ones(4))


def test_each_epoch_is_a_permutation_fixed_by_seed_and_epoch():
    s = subset()
    a, b = SelectionSampler(s, 50, seed=3), SelectionSampler(s, 50, seed=3)
    orders = []
    for epoch in range(3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert list(a) == list(b)
        assert sorted(a) == sorted(s.indices.tolist())
        orders.append(list(a))
    assert orders[0] != orders[1] != orders[2]
    assert list(SelectionSampler(s, 50, seed=4)) != orders[0]
    assert list(SelectionSampler(s, 50, seed=3, shuffle=False)) == s.indices.tolist()


def test_the_global_rng_neither_drives_nor_is_touched_by_the_sampler():
    sampler = SelectionSampler(subset(), 50, seed=1)
    torch.manual_seed(0)
    first = list(sampler)
    state = torch.get_rng_state()
    torch.manual_seed(123)
    assert list(sampler) == first
    torch.manual_seed(0)
    list(sampler)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize("k", [17, 18, 1])
def test_shards_cover_the_selection_like_distributed_sampler(replicas, k):
    s = subset(k=k)
    shards = [list(SelectionSampler(s, 50, seed=2, num_replicas=replicas, rank=r)) for r in range(replicas)]
    assert len({len(x) for x in shards}) == 1
    flat = [i for x in shards for i in x]
    assert set(flat) == set(s.indices.tolist()) and len(flat) - k < replicas
    # The same padding and split as DistributedSampler over the unshuffled selection.
    plain = [list(SelectionSampler(s, 50, seed=2, shuffle=False, num_replicas=replicas, rank=r)) for r in range(replicas)]
    positions = [list(DistributedSampler(range(k), num_replicas=replicas, rank=r, shuffle=False)) for r in range(replicas)]
    assert plain == [[s.indices[p].item() for p in pos] for pos in positions]


def test_resume_at_restarts_the_epoch_part_way_once():
    sampler = SelectionSampler(subset(), 50, seed=5)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.resume_at(6)
    assert list(sampler) == whole[6:]
    assert list(sampler) == whole
    with pytest.raises(ValueError, match=r"resume position 18 is outside this epoch's 17 samples"):
        sampler.resume_at(18)


def test_state_round_trips_and_refuses_another_run():
    a = SelectionSampler(subset(), 50, seed=5)
    a.set_epoch(4)
    a.set_selection(subset(k=9, seed=1))
    b = SelectionSampler(Selection.full(50), 50, seed=5)
    b.load_state_dict(a.state_dict())
    assert b.epoch == 4 and list(b) == list(a) and torch.equal(b.selection.weights, a.selection.weights)
    with pytest.raises(ValueError, match=r"saved seed = 5 differs from this run's 6"):
        SelectionSampler(Selection.full(50), 50, seed=6).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match=r"saved n = 50 differs from this run's 40"):
        SelectionSampler(Selection.full(40), 40, seed=5).load_state_dict(a.state_dict())


def test_bad_sampler_arguments():
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, num_replicas = 2\)"):
        SelectionSampler(Selection.full(5), 5, seed=0, num_replicas=2, rank=2)
    with pytest.raises(TypeError, match=r"seed must be an int"):
        SelectionSampler(Selection.full(5), 5, seed=1.5)
    assert len(SelectionSampler(Selection(torch.zeros(0, dtype=torch.int64)), 5, seed=0)) == 0


def test_batched_fetch_equals_one_sample_at_a_time():
    data = TensorDataset(torch.arange(20.0).reshape(10, 2), torch.arange(10) % 3)
    for inner in (data, torch.utils.data.Subset(data, [9, 3, 4, 0, 7])):
        ds = IndexedDataset(inner)
        indices = [4, 0, 2] if len(inner) == 5 else [9, 1, 5, 5]
        batched = ds.__getitems__(indices)
        single = [ds[i] for i in indices]
        assert len(batched) == len(single)
        for (x, y, i), (x1, y1, i1) in zip(batched, single):
            assert torch.equal(x, x1) and torch.equal(y, y1) and i == i1
