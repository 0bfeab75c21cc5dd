"""rnnfast benchmarks (a package only so pytest imports benchmarks/conftest.py as benchmarks.conftest, leaving the name `conftest` to tests/)."""
