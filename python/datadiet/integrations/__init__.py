"""datadiet's strategies inside other training frameworks, through the same ``Driver`` the
reference loop uses (so a strategy behaves the same in either):

- ``datadiet.integrations.lightning.DatadietCallback``: PyTorch Lightning's ``Trainer.fit``;
- ``datadiet.integrations.accelerate.accelerated_driver``: a Hugging Face ``accelerate`` loop.

Each module imports its framework only when used.
"""
