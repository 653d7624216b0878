"""Shared fixtures: the tiny profile's models, built once per machine and cached in data/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "data" / "demo"

os.environ.setdefault("SPEECHLM_PROFILE", "tiny")


@pytest.fixture(scope="session")
def tiny_models():
    """ModelsConfig of the tiny profile, with its checkpoints built (cached in data/models)."""
    from speechlm_utils.checkpoints import ensure_tiny_checkpoints
    from speechlm_utils.config import ModelsConfig

    models = ModelsConfig.from_profile("tiny", data_dir=REPO / "data")
    ensure_tiny_checkpoints(models)
    return models
