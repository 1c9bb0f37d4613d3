"""Shared by every tier: property tests are deterministic, so CI never meets a new random
counterexample that a developer's run did not (explore with HYPOTHESIS_PROFILE=explore)."""
from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
