"""Imported into the ranks' forkserver under mutmut (see `pytest_sessionstart` in conftest.py)."""

from mutmut.configuration import config

config()
