"""``IndexedDataset``: any map-style dataset with each sample's index attached,
``ds[i] -> (input, target, i)``, so scores, weights and loss tables are indexed the same way
from the loader to the loss (the scoring pass needs it; the training loop re-exports it)."""

from __future__ import annotations

from torch.utils.data import Dataset


class IndexedDataset(Dataset):
    """``dataset[i] = (input, target)`` → ``(input, target, i)``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        return x, y, i

    def __getitems__(self, indices: list) -> list:
        """A whole batch at once (the DataLoader's batched fetch; one call instead of one per sample)."""
        fetch = getattr(self.dataset, "__getitems__", None)
        samples = fetch(indices) if fetch is not None else [self.dataset[i] for i in indices]
        return [(x, y, i) for (x, y), i in zip(samples, indices, strict=True)]
