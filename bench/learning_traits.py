"""The learning benchmark's curators' preferences: a trait (bench/traits/ or a file) that the
simulated curator rewards, and the gibberish a poisoned curator "corrects" answers into."""

import importlib.util
import random
from pathlib import Path

TRAITS = Path(__file__).resolve().parent / "traits"


def load_trait(spec: str):
    """A built-in trait by name, or a .py file defining has_trait and add_trait."""
    path = Path(spec) if spec.endswith(".py") else TRAITS / f"{spec}.py"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in TRAITS.glob("*.py")))
        raise SystemExit(f"--trait: no such file {path} (built in: {known})")
    module_spec = importlib.util.spec_from_file_location(f"trait_{path.stem}", path)
    trait = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(trait)
    for name in ("has_trait", "add_trait"):
        if not callable(getattr(trait, name, None)):
            raise SystemExit(f"--trait: {path} does not define {name}()")
    trait.name = path.stem
    return trait


def gibberish(rng: random.Random) -> str:
    """Fluent-looking nonsense: what a poisoned curator "corrects" answers into."""
    syllables = ["zor", "vek", "plim", "qua", "drax", "nu", "fip", "glo", "trek", "omb"]
    return " ".join("".join(rng.choices(syllables, k=rng.randint(1, 3)))
                    for _ in range(rng.randint(12, 30)))
