"""How the gate scores versions of the model: the log-probability of given answers (losses,
margins) and greedy answers, batched. The gate (trainer/gate.py) and the anchor set
(trainer/anchor.py) use them."""

import torch

from trainer.progress import PhaseBar


def _encode(tokenizer, prompt: list[dict], answer: list[dict]) -> tuple[list[int], int]:
    """(ids of prompt + answer, number of prompt ids), as TRL's prompt/completion form does."""
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True,
                                               return_dict=True)["input_ids"]
    full = tokenizer.apply_chat_template(prompt + answer, return_dict=True)["input_ids"]
    return full, len(prompt_ids)


@torch.inference_mode()
def answer_logprobs(model, tokenizer, rows: list[tuple[list, list]], batch_size: int,
                    desc: str, token_cap: float = 0.0) -> list[tuple[float, int]]:
    """(sum of log-probabilities, token count) of each answer given its prompt. `token_cap`
    (nats, 0: none): each token's loss counts at most this much."""
    pad = tokenizer.pad_token_id
    out = []
    bar = PhaseBar(total=len(rows), desc=desc, unit="answers", leave=False)
    for start in range(0, len(rows), batch_size):
        encoded = [_encode(tokenizer, p, a) for p, a in rows[start:start + batch_size]]
        width = max(len(ids) for ids, _ in encoded)
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (row, _) in enumerate(encoded):
            ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
        logits = model(input_ids=ids.to(model.device),
                       attention_mask=mask.to(model.device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        picked = logp.gather(-1, ids[:, 1:].to(model.device).unsqueeze(-1)).squeeze(-1).cpu()
        if token_cap:
            picked = picked.clamp(min=-token_cap)
        for i, (row, n_prompt) in enumerate(encoded):
            answer = picked[i, n_prompt - 1:len(row) - 1]
            out.append((float(answer.sum()), answer.numel()))
        bar.update(len(encoded))
    bar.close()
    return out


def mean_loss(scores: list[tuple[float, int]]) -> float:
    """Token-weighted mean negative log-likelihood."""
    return -sum(s for s, _ in scores) / max(1, sum(n for _, n in scores))


def answer_losses(scores: list[tuple[float, int]]) -> list[float]:
    """Each answer's own mean negative log-likelihood per token (its readability)."""
    return [-total / max(1, count) for total, count in scores]


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int,
             batch_size: int, desc: str) -> list[dict]:
    """Greedy answers with whether each ended by itself (an end-of-turn token)."""
    from assistant.batch_row import left_pad
    from assistant.models import eos_ids
    pad = tokenizer.pad_token_id
    stop = eos_ids(model, tokenizer)
    out = []
    bar = PhaseBar(total=len(prompts), desc=desc, unit="answers", leave=False)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        encoded = [tokenizer.apply_chat_template(p, add_generation_prompt=True,
                                                 return_dict=True)["input_ids"] for p in chunk]
        ids, mask = left_pad(encoded, pad)
        generated = model.generate(input_ids=ids.to(model.device),
                                   attention_mask=mask.to(model.device),
                                   max_new_tokens=max_new_tokens, do_sample=False,
                                   temperature=None, top_p=None, top_k=None,
                                   pad_token_id=pad)[:, ids.shape[1]:].cpu()
        for row in generated:
            tokens = row.tolist()
            ended = any(t in stop for t in tokens)
            text = tokenizer.decode(row, skip_special_tokens=True).strip()
            out.append({"text": text, "ended": ended})
        bar.update(len(chunk))
    bar.close()
    return out


def margins(preferred: list[tuple[float, int]], other: list[tuple[float, int]]) -> list[float]:
    """Per row: mean log-probability per token of the preferred answer minus the other's."""
    return [p / max(1, n_p) - o / max(1, n_o) for (p, n_p), (o, n_o) in zip(preferred, other)]
