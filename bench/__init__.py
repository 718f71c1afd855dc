"""datadiet benchmarks: ``python -m bench <op> [options]`` (``python -m bench --list``)."""
