import os
import shutil
from pathlib import Path

import pytest
from hypothesis import settings

from storage import Home, init_db
from tests.tiny import make_tiny_model

# Never reach for a model hub from the tests; everything they load is built or shipped.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

# Property-based tests explore new random examples on every run of a developer's machine; in
# CI they replay a fixed sequence, so a green build stays green for the same code.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def home(tmp_path) -> Home:
    home = Home.resolve(tmp_path / "home")
    init_db(home)
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory) -> Path:
    """A FLYWHEEL_HOME whose models/ holds the embedded SmolLM2, converted once per session."""
    from assistant import models
    root = tmp_path_factory.mktemp("embedded-home")
    models.resolve(None, Home.resolve(root))
    return root


def copy_model_cache(embedded_home: Path, home: Home) -> None:
    """Give `home` the converted model without converting again (hard links: no copy)."""
    shutil.copytree(Path(embedded_home) / "models", home.models_dir, copy_function=os.link,
                    dirs_exist_ok=True)
