"""A judge learnt from the app's own feedback: which of two answers would the curators prefer?

Trained on the run's preference pairs (a correction against the answer it corrects, 👍
against 👎 to the same question, side-by-side picks: the DPO train split), it is a linear
model on the difference of the two answers' sentence embeddings (all-MiniLM-L6-v2, the
embedder the dataset pipeline already loads), fitted symmetrically so that swapping the two
answers flips the verdict. An answer is embedded as its opening and its closing (the last
words): MiniLM reads at most 256 word pieces, and how an answer ends (a closing line, a
summary, a question back) is as much a matter of taste as how it begins.

Its accuracy on the held-out pairs (the validation split) is in the gate's report; with fewer
than `GateConfig.judge_min_pairs` pairs, or too few held out to measure it, it is skipped
and says so. Then it scores the candidate's and the reference's greedy answers to the gate's
held-out prompts: the predicted win rate, with its 95% Wilson interval.

Why not TRL's RewardTrainer with a LoRA head on the base model: measured with
bench/judge.py (100 correction pairs to learn from, 80 held out, SmolLM2, 2-core CPU), it
ranked held-out pairs as well or a little better (signoff 1.00 against 1.00, brief 1.00
against 0.95, bullets 1.00 against 1.00; each interval about [0.95, 1.00], brief's [0.88,
0.98]), but took 330 s a night against 12 to 15 s for this judge.
"""

from dataclasses import dataclass

import numpy as np

from storage.ab import wilson

TAIL_WORDS = 60  # the closing an answer is also embedded by


@dataclass
class Judge:
    """A fitted judge: weights over embedding differences, and how well it did held out."""
    weights: np.ndarray
    accuracy: float          # share of held-out pairs it ranks the curators' way
    trained_on: int          # pairs it was fitted on
    heldout: int             # pairs its accuracy was measured on


def answer_text(answer: list[dict] | str) -> str:
    """An answer (a completion's turns, or a text) as one text."""
    return answer if isinstance(answer, str) else " ".join(t["content"] for t in answer)


def features(embed, answers: list[str]) -> np.ndarray:
    """Each answer as its opening's and its closing's embeddings, side by side."""
    tails = [" ".join(a.split()[-TAIL_WORDS:]) for a in answers]
    return np.hstack([np.asarray(embed(answers)), np.asarray(embed(tails))])


def fit(embed, train: list[tuple[str, str]], heldout: list[tuple[str, str]]) -> Judge:
    """Fit on (preferred, other) answer pairs; measure on the held-out ones."""
    from sklearn.linear_model import LogisticRegression
    diff = features(embed, [a for a, _ in train]) - features(embed, [b for _, b in train])
    # Both orders, no intercept: the verdict on (b, a) is the opposite of that on (a, b).
    model = LogisticRegression(fit_intercept=False, C=1.0, max_iter=1000)
    model.fit(np.vstack([diff, -diff]), np.r_[np.ones(len(diff)), np.zeros(len(diff))])
    weights = model.coef_[0]
    held = features(embed, [a for a, _ in heldout]) - features(embed, [b for _, b in heldout])
    accuracy = float(np.mean(held @ weights > 0))
    return Judge(weights, round(accuracy, 4), len(train), len(heldout))


def win_rate(judge: Judge, embed, candidate: list[str], reference: list[str]) -> dict:
    """How often the judge prefers the candidate's answer to the reference's, prompt by
    prompt (identical answers are ties and left out), with its 95% Wilson interval."""
    margin = (features(embed, candidate) - features(embed, reference)) @ judge.weights
    decided = [m for m, c, r in zip(margin, candidate, reference) if c != r]
    wins = sum(m > 0 for m in decided)
    return {"wins": int(wins), "decided": len(decided), "ties": len(margin) - len(decided),
            "rate": round(wins / len(decided), 4) if decided else None,
            "interval": wilson(int(wins), len(decided))}


def assess(sets: dict, gate, candidate: list[str] | None, reference: list[str] | None,
           embed=None) -> dict:
    """The judge's part of the gate: fitted on `sets["judge"]`, its held-out accuracy and its
    predicted win rate of the candidate's answers over the reference's; or why it was
    skipped. `embed` defaults to all-MiniLM-L6-v2 (loaded only when there is enough)."""
    pairs = sets.get("judge") or {"train": [], "heldout": []}
    if len(pairs["train"]) < gate.judge_min_pairs:
        return {"skipped": f"{len(pairs['train'])} preference pairs to learn from, "
                           f"{gate.judge_min_pairs} needed (judge_min_pairs)"}
    if len(pairs["heldout"]) < gate.judge_min_heldout:
        return {"skipped": f"{len(pairs['heldout'])} held-out pairs to measure it on, "
                           f"{gate.judge_min_heldout} needed (judge_min_heldout)"}
    if not candidate or not reference:
        return {"skipped": "no answers to held-out prompts to judge"}
    if embed is None:
        from trainer.dedup_pass import default_embedder
        embed = default_embedder()
    judge = fit(embed, pairs["train"], pairs["heldout"])
    return {"accuracy": judge.accuracy, "trained_on": judge.trained_on,
            "heldout": judge.heldout, "trusted": judge.accuracy >= gate.judge_min_accuracy,
            **win_rate(judge, embed, candidate, reference)}
