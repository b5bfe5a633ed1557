"""Measuring lists of messages in the model's tokens, chat template included, fast enough to
measure every example the dataset pipeline fits to the context (trainer/cleaning.py)."""


class TokenCounter:
    """The length of lists of messages in the model's tokens, chat template included, as
    `build(count_tokens=...)` takes it; `many()` measures a batch at once.

    A list's length is its template's length with every content left empty (measured once
    per sequence of roles) plus each content's own tokens: chat templates wrap each message in
    fixed text, so the sum equals tokenizing the whole rendered chat (tests check it against
    `apply_chat_template`), while each distinct content is tokenized once, in batches, by the
    Rust tokenizer instead of rendering Jinja for every example."""

    def __init__(self, tokenizer, remember: int = 100_000):
        self.tokenizer, self.remember = tokenizer, remember
        self.skeletons: dict[tuple, int] = {}
        self.lengths: dict[str, int] = {}  # recent contents (a history recurs turn by turn)

    def _skeleton(self, roles: tuple) -> int:
        if roles not in self.skeletons:
            empty = [{"role": r, "content": ""} for r in roles]
            self.skeletons[roles] = len(self.tokenizer.apply_chat_template(
                empty, return_dict=True)["input_ids"])
        return self.skeletons[roles]

    def many(self, turn_lists: list[list[dict]]) -> list[int]:
        """The token length of each list of messages, chat template included."""
        new = list(dict.fromkeys(t["content"] for turns in turn_lists for t in turns
                                 if t["content"] not in self.lengths))
        if len(self.lengths) + len(new) > self.remember:
            self.lengths.clear()
            new = list(dict.fromkeys(t["content"] for turns in turn_lists for t in turns))
        if new:
            backend = getattr(self.tokenizer, "backend_tokenizer", None)  # Rust, in batches
            lengths = ([len(e.ids) for e in backend.encode_batch(new, add_special_tokens=False)]
                       if backend is not None else
                       [len(ids) for ids in self.tokenizer(new, add_special_tokens=False)[
                           "input_ids"]])
            self.lengths.update(zip(new, lengths))
        return [self._skeleton(tuple(t["role"] for t in turns))
                + sum(self.lengths[t["content"]] for t in turns) for turns in turn_lists]

    def __call__(self, turns: list[dict]) -> int:
        return self.many([turns])[0]


def token_counter(model_folder) -> TokenCounter:
    """A TokenCounter for the model in `model_folder`."""
    from transformers import AutoTokenizer
    return TokenCounter(AutoTokenizer.from_pretrained(model_folder))
