import os
import shutil
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from hypothesis import settings

from storage import Home, init_db, open_db
from storage import chat as store
from tests.tiny import make_tiny_model
from trainer.anchor import TOPICS
from trainer.config import TrainConfig, load

# Fixtures that belong to a group live in plugin modules: the servers several test modules run
# against, and the browser with the page's helpers.
pytest_plugins = ["tests.fixtures_servers", "tests.fixtures_browser"]

# Where slow tests leave their logs and screenshots.
OUTPUT = Path(os.environ.get("FLYWHEEL_TEST_OUTPUT", "test-output"))

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


def wait_for(check, timeout: float = 30, what: str = "the condition", every: float = 0.1):
    """Call `check` until it returns something true, and return that. For a state another
    process or thread reaches without an event this test could wait on (a server's
    /healthz, a row written by the trainer); a timeout fails with `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def flywheel(*args: str) -> list[str]:
    """The command line of `flywheel ARGS` in this Python."""
    return [sys.executable, "-m", "flywheel.cli", *args]


def health(url: str) -> dict | None:
    """A server's /healthz, or None while it does not answer."""
    try:
        return httpx.get(f"{url}/healthz", timeout=2).json()
    except httpx.HTTPError:
        return None


def client(url, key="unused"):
    """The official `openai` client for a Flywheel server at `url`."""
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def train_config(model_dir, *sets: str) -> TrainConfig:
    """A fast training config for the tiny model; `sets` as `flywheel train --set` takes them.
    (Its random weights find every text unreadable, so the unreadable-feedback check is off.)"""
    return load(None, [f"model='{model_dir}'", "validation_share=0.0", "anchor_share=0.0",
                       "min_examples=4", "sft.max_steps=3", "sft.batch_size=2",
                       "sft.learning_rate=1e-2", "gate.max_unreadable_feedback=1",
                       "gate.anchor_examples=4",
                       "gate.generation_prompts=2", "gate.max_new_tokens=8",
                       "gate.known_facts=4", "gate.fact_tokens=8",
                       "gate.counterfactual_pairs=6", *sets])


def make_adapter(tiny_model_dir, folder, seed):
    """A real LoRA adapter for the tiny model, with random (non-zero) weights."""
    import torch
    from peft import LoraConfig, get_peft_model

    from assistant import models
    model, _ = models.load(models.BaseModel("tiny", tiny_model_dir))
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear",
                                                  init_lora_weights=False))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(folder)
    return folder


def add_answers(home, n, rating="up", start=0, correct_every=0, adapter_id=None):
    """`n` one-turn conversations, each answer rated `rating` (None: unrated) and every
    `correct_every`-th corrected; returns the answers' ids."""
    ids = []
    with open_db(home) as db:
        for i in range(start, start + n):
            conv = store.create_conversation(db, system_prompt="Answer briefly.")
            q = store.add_message(db, conv, "user", f"Question {i}: what is {TOPICS[i % 30]}?")
            a = store.add_message(db, conv, "assistant", f"Answer {i}: {TOPICS[-i % 30 - 1]}.", q,
                                  adapter_id=adapter_id)
            if rating:
                store.rate(db, a, rating)
            if correct_every and i % correct_every == 0:
                store.add_correction(db, a, f"Better answer {i}: {TOPICS[i % 30]} matters.")
            ids.append(a)
    return ids
