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

    models = ModelsConfig.from_profile("tiny", data_dir=REPO / "data" / "tiny")
    ensure_tiny_checkpoints(models)
    return models


@pytest.fixture(scope="session")
def codec(tiny_models):
    from speechlm_utils.codec import Codec

    return Codec.load(tiny_models, num_codebooks=4)


@pytest.fixture(scope="session")
def aligner(tiny_models):
    from speechlm_utils.align import Aligner

    return Aligner.load(tiny_models)


@pytest.fixture(scope="session")
def text_tokenizer(tiny_models):
    from speechlm_utils.checkpoints import load_text_tokenizer

    return load_text_tokenizer(tiny_models)


def pytest_collection_modifyitems(config, items):
    """Browser tests last: by then the notebooks have made the demo data they reuse."""
    items.sort(key=lambda item: "tests/browser" in str(item.fspath))
