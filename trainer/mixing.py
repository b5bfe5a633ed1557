"""The training set of one run: the dataset pipeline's output (trainer/dataset.py) with a
share of earlier runs' examples (replay, against forgetting what they taught) and of the
anchor set (general prompts with the base model's answers) mixed into the SFT split."""

import random
from collections import Counter

from assistant import models
from storage import Home, open_db
from storage.run_records import DatasetManifest
from trainer import anchor
from trainer.config import TrainConfig

REPLAY_FILE = "sft-train.jsonl"  # a run's own feedback examples, replayed by later runs
REPLAYED = ("replay", "anchor")  # sources mixed in here, not this run's feedback


def gather(home: Home, base: models.BaseModel, config: TrainConfig,
           exclude: set[str] = frozenset()) -> tuple[dict, DatasetManifest]:
    """({format: {"train", "validation"}}, manifest): the pipeline's datasets (without the
    examples in `exclude`), with a share of earlier runs' SFT examples and of the anchor set
    mixed into the SFT training split."""
    from storage import feedback
    from storage.embeddings import EmbeddingCache
    from trainer.cleaning import example_hash
    from trainer.dataset import DataConfig, build
    from trainer.dataset_files import read_jsonl
    from trainer.dedup_pass import MINILM, default_embedder
    from trainer.tokens import token_counter

    data_config = DataConfig(config)  # the run's own max_length, validation_share, min_* ...
    cache = EmbeddingCache.for_home(home, MINILM)  # a night embeds only new feedback
    try:
        with open_db(home) as db:
            sets, manifest = build(db, data_config, count_tokens=token_counter(base.folder),
                                   embed=default_embedder(cache), progress=True)
    finally:
        cache.close()
    for sides in sets.values():
        sides["train"] = [e for e in sides["train"] if e["sha256"] not in exclude]
    train = [{**e, "message_id": e["message_ids"][0]} for e in sets["sft"]["train"]]
    rng = random.Random(config.seed)
    # Replay: earlier runs' examples that this run's data no longer holds, as long as their
    # answer may still be trained on (not flagged, consent given, not held out). With the
    # default (all accumulated feedback) that is rare; it matters when a run continues the
    # active adapter on new feedback only.
    held_out = {i for e in sets["sft"]["validation"] for i in e["message_ids"]}
    seen = {e["sha256"] for e in train}  # not `exclude`: the continued adapter's own lessons
    earlier = {e["sha256"]: e for path in sorted(home.runs_dir.glob(f"*/{REPLAY_FILE}"))
               for e in read_jsonl(path) if e["sha256"] not in seen
               and e["message_id"] not in held_out}
    with open_db(home) as db:  # flagged, withheld or pruned since: no longer trained on
        allowed = feedback.trainable(db, [e["message_id"] for e in earlier.values()])
    earlier = [e for e in earlier.values() if e["message_id"] in allowed]
    replay = (rng.sample(earlier, min(len(earlier), round(config.replay_share * len(train))))
              if train else [])
    n_anchor = round(config.anchor_share * len(train))
    chosen = rng.sample(anchor.TRAIN_PROMPTS, min(n_anchor, len(anchor.TRAIN_PROMPTS)))
    anchors = [{**a, "source": "anchor", "message_id": None}
               for a in (anchor.examples(home, base, chosen) if chosen else [])]
    mixed = train + [{**e, "source": "replay"} for e in replay] + anchors
    for e in mixed:
        e.setdefault("sha256", example_hash(e))
    sets["sft"]["train"] = mixed
    manifest.update(count=len(mixed), sources=dict(Counter(e["source"] for e in mixed)),
                    validation=len(sets["sft"]["validation"]),
                    sft_feedback=len(train) + len(sets["sft"]["validation"]))
    return sets, manifest
