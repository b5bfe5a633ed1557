"""Near-duplicate removal past the size where exact search is affordable: the HNSW index
makes the same decisions as exact search, and every planted near copy is found."""

import numpy as np

from trainer.dedup import NearDuplicates


def planted(n: int, dim: int = 64, seed: int = 0):
    """`n` random examples (prompt and answer vectors, unit length, nearly orthogonal), a
    tenth of them near copies of an earlier one, and a twentieth asking an earlier question
    with a different answer (a group, not a copy)."""
    rng = np.random.default_rng(seed)

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)
    prompts, answers = unit(rng.normal(size=(n, dim))), unit(rng.normal(size=(n, dim)))
    copies, same_question = set(), set()
    for i in range(n // 10, n):
        roll = rng.random()
        j = int(rng.integers(0, max(1, i // 2)))
        if roll < 0.10:
            prompts[i] = unit(prompts[j] + rng.normal(scale=0.02, size=dim))
            answers[i] = unit(answers[j] + rng.normal(scale=0.02, size=dim))
            copies.add(i)
        elif roll < 0.15:
            prompts[i] = unit(prompts[j] + rng.normal(scale=0.02, size=dim))
            same_question.add(i)
    return prompts.astype(np.float32), answers.astype(np.float32), copies, same_question


def run(prompts, answers, exact_limit: int, chunk: int = 1024):
    index = NearDuplicates(0.95, 1, exact_limit=exact_limit)
    out = []
    for start in range(0, len(prompts), chunk):
        end = start + chunk
        out += index.add(prompts[start:end], [answers[start:end]],
                         [f"c{i}" for i in range(start, min(end, len(prompts)))])
    return out, index.approximate


def test_the_hnsw_index_decides_as_exact_search_does():
    prompts, answers, copies, same_question = planted(12_000)
    exact, approximate_used = run(prompts, answers, exact_limit=10**9)
    graph, graph_used = run(prompts, answers, exact_limit=2_000)
    assert not approximate_used and graph_used
    dropped = {i for i, g in enumerate(exact) if g is None}
    assert copies <= dropped and not (same_question & dropped)
    assert all(exact[i] != f"c{i}" for i in same_question)  # grouped with the earlier question
    agree = sum(a == b for a, b in zip(exact, graph)) / len(exact)
    assert agree >= 0.999, agree


def test_copies_within_one_chunk_and_across_chunks_are_both_found():
    prompts, answers, _, _ = planted(10)
    prompts = np.concatenate([prompts, prompts[:3]])
    answers = np.concatenate([answers, answers[:3]])
    assert run(prompts, answers, exact_limit=10**9, chunk=13)[0][10:] == [None] * 3
    assert run(prompts, answers, exact_limit=10**9, chunk=5)[0][10:] == [None] * 3
