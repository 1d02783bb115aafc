"""The real local stack for end-to-end tests: the ``stack`` and ``isolated_config`` fixtures are in
tests/conftest.py (shared with e2e-marked tests elsewhere, e.g. tests/jobs/test_bench.py)."""
