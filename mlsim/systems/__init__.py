"""Older name of :mod:`mlsim.testsystems`, kept so existing imports keep working (a re-export)."""

from mlsim import testsystems as _testsystems
from mlsim.testsystems import *  # noqa: F403 - the whole public API, by definition

__all__ = list(_testsystems.__all__)
