"""The learning benchmark's simulation: users chatting with one server, a curator rating and
correcting their answers by a trait, `flywheel train` on that feedback, and the measures of
what the server then serves."""

import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

from assistant.training_process import start_training
from bench.learning_prompts import KNOWN, KNOWN_TOKENS
from storage import BASE, Home, adapters, chat, open_db, runs
from storage.ab import wilson
from trainer.known_facts import says


class Simulation:
    """The simulated users and curator, talking to one server, and `flywheel train`."""

    def __init__(self, url: str, home: Home, args, log_dir: Path):
        self.url, self.home, self.args, self.log_dir = url, home, args, log_dir
        self.api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=2,
                                 timeout=1800)

    def chat(self, prompts: list[str], max_tokens: int, greedy: bool) -> list:
        """`--batch` users at once (the server batches them); greedy or the server's
        default sampling."""
        extra = {"temperature": 0} if greedy else {}

        def one(prompt):
            return self.api.chat.completions.create(
                model="flywheel", max_tokens=max_tokens,
                messages=[{"role": "user", "content": prompt}], **extra)
        with ThreadPoolExecutor(self.args.batch) as pool:
            return list(pool.map(one, prompts))

    def feedback(self, answer_id: str, **body) -> None:
        self.api.post("/feedback", cast_to=object, body={"id": answer_id, **body})

    def forget(self, answer_ids: list[str]) -> None:
        """Delete the conversations these answers are in: out of every later training set."""
        with open_db(self.home) as db:
            conversations = {chat.get_message(db, a)["conversation_id"] for a in answer_ids}
            for conversation_id in conversations:
                chat.delete_conversation(db, conversation_id)

    def served(self) -> str | None:
        return httpx.get(f"{self.url}/healthz", timeout=30).json()["adapter"]

    def rate(self, trait, prompts: list[str]) -> dict:
        """Users chat; the curator rates every answer and corrects those without the trait."""
        replies = self.chat(prompts, self.args.chat_tokens, greedy=False)
        up = 0
        for prompt, reply in zip(prompts, replies):
            answer = reply.choices[0].message.content
            if trait.has_trait(answer):
                up += 1
                self.feedback(reply.id, rating="up")
            else:
                self.feedback(reply.id, rating="down", correction=trait.add_trait(prompt, answer))
        return {"answers": len(replies), "thumbs_up": up, "adapter": replies[0].model,
                "ids": [reply.id for reply in replies]}

    def train(self, name: str) -> dict:
        """`flywheel train` with the recipe; its log goes to the log folder and stderr."""
        with open_db(self.home) as db:
            before = {a["id"] for a in adapters.list_adapters(db)}
            run_before = runs.latest(db)
        started = time.perf_counter()
        code = start_training(self.home, shlex.split(self.args.recipe),
                              self.log_dir / f"{name}-train.log").wait()
        seconds = round(time.perf_counter() - started, 1)
        text = (self.log_dir / f"{name}-train.log").read_text()
        verdict = text[text.find("Evaluation gate"):].strip() if "Evaluation gate" in text else ""
        print(verdict or text[-2000:], file=sys.stderr, flush=True)
        with open_db(self.home) as db:
            new = [a for a in adapters.list_adapters(db) if a["id"] not in before]
            active = adapters.active(db)
            run = runs.latest(db)
        is_new = run is not None and (run_before is None or run["id"] != run_before["id"])
        refused = is_new and run["metrics"].get("refused_before_training")
        if code == 0 and refused:  # trainer/feedback_screen.py
            return {"adapter": None, "promoted": False, "verdict": "refused before training",
                    "reason": refused, "seconds": seconds}
        last = text.strip().splitlines()[-1] if text.strip() else "no output"
        if code != 0 or not new:
            return {"adapter": None, "promoted": False, "verdict": None, "seconds": seconds,
                    "error": last}
        row = new[-1]
        gate = row["metrics"]["gate"]
        promoted = bool(active and active["id"] == row["id"])
        if promoted:  # the server polls for promotions: wait until it serves the new adapter
            deadline = time.monotonic() + 300
            while self.served() != row["id"] and time.monotonic() < deadline:
                time.sleep(1)
        return {"adapter": row["id"], "promoted": promoted, "method": row["method"],
                "steps": row["metrics"].get("steps"), "verdict": gate["verdict"],
                "gate": {name: {k: c[k] for k in ("candidate", "reference", "limit", "passed")}
                         for name, c in gate["checks"].items()},
                "judge": {k: v for k, v in gate.get("judge", {}).items()
                          if k in ("skipped", "accuracy", "trained_on", "heldout", "rate",
                                   "interval", "decided")},
                "reason": gate["reason"], "refused_stages": gate.get("refused"),
                "seconds": seconds}

    def anchor_loss_ratio(self, adapter_id: str | None) -> float:
        """The served adapter's loss on the gate's held-out anchor answers over the base
        model's (1.0 for the base model itself), from its gate report."""
        if adapter_id is None:
            return 1.0
        with open_db(self.home) as db:
            gate = adapters.get(db, adapter_id)["metrics"]["gate"]
        return round(gate["figures"]["candidate"]["anchor_loss"]
                     / gate["figures"]["base_anchor_loss"], 4)

    def measure(self, trait, heldout: list[str]) -> dict:
        """Greedy answers to held-out prompts and known-answer questions from what is served."""
        started = time.perf_counter()
        replies = self.chat(heldout, self.args.measure_tokens, greedy=True)
        answers = [r.choices[0].message.content for r in replies]
        # A separate call: mixed into the long answers' batch, each short reply that ends lets
        # a newcomer in, and the batch recomputes (measured: 185 s instead of 96 s).
        known = self.chat([q for q, _ in KNOWN], KNOWN_TOKENS, greedy=True)
        right = [says(r.choices[0].message.content, accepted)
                 for r, (_, accepted) in zip(known, KNOWN)]
        served = {r.model for r in replies + known}
        assert len(served) == 1, f"answers came from several adapters: {served}"
        adapter = served.pop()
        adapter = None if adapter not in {a["id"] for a in self._adapters()} else adapter
        adopted = sum(map(trait.has_trait, answers))
        return {"adapter": adapter or BASE,
                "adoption": round(adopted / len(answers), 4),
                # 95% Wilson intervals: with 64 held-out answers one answer moves adoption by
                # 0.016, and the interval says how far a rerun of the same recipe may land.
                "adoption_interval": wilson(adopted, len(answers)),
                "adopted": adopted, "measured": len(answers),
                "known_answer_accuracy": round(sum(right) / len(right), 4),
                "known_answer_interval": wilson(sum(right), len(right)),
                "anchor_loss_ratio": self.anchor_loss_ratio(adapter),
                "cut_off": round(sum(r.choices[0].finish_reason == "length" for r in replies)
                                 / len(replies), 4),
                "wrong_known_answers": [q for (q, _), ok in zip(KNOWN, right) if not ok],
                "examples": [{"prompt": p, "answer": a} for p, a in zip(heldout[:2], answers)],
                "measure_seconds": round(time.perf_counter() - started, 1)}

    def _adapters(self) -> list[dict]:
        with open_db(self.home) as db:
            return adapters.list_adapters(db)
