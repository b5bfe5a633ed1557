"""The data pipeline: selection, scrubbing, deduplication and splits, with property-based
tests (hypothesis), and all three formats built from feedback sent to a real server."""

import json
import string
import tempfile

import httpx
import openai
import phonenumbers
import pytest
from gradio_client import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stdnum import luhn

from assistant.server import ServeConfig, serve_in_thread
from flywheel.cli import main
from storage import Home, adapters, init_db, open_db, review, users
from storage import chat as store
from tests.conftest import make_adapter
from trainer.dataset import DataConfig, build, split_of
from trainer.privacy import scrub
from trainer.selection import select

# ---- splits ---------------------------------------------------------------------------------

def test_the_validation_share_is_about_what_was_asked():
    sides = [split_of(f"conv-{i}", 0.2) for i in range(4000)]
    assert abs(sides.count("validation") / 4000 - 0.2) < 0.03


# ---- scrubbing ------------------------------------------------------------------------------

def card_numbers():
    def make(prefix, body):
        digits = prefix + body
        number = digits + luhn.calc_check_digit(digits)
        return " ".join(number[i:i + 4] for i in range(0, len(number), 4))
    return st.builds(make, st.sampled_from(["4", "51", "37", "6011"]),
                     st.text("0123456789", min_size=12, max_size=12))


def phone_numbers():
    def make(region, seed):
        example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
        return phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    return st.builds(make, st.sampled_from(["US", "GB", "DE", "FR", "IN", "BR", "JP", "AU"]),
                     st.integers())


def api_keys():
    alnum = string.ascii_letters + string.digits
    token = st.text(alnum, min_size=36, max_size=36).filter(
        lambda t: any(c.isdigit() for c in t) and len(set(t)) > 12)
    return st.one_of(st.builds(lambda t: "ghp_" + t, token),
                     st.builds(lambda t: "sk-proj-" + t, token),
                     st.builds(lambda t: "AKIA" + t[:16].upper(), token))


SAMPLES = {"email": st.emails(), "ip": st.ip_addresses().map(str), "card": card_numbers(),
           "phone": phone_numbers(), "secret": api_keys()}
filler = st.text(string.ascii_letters + " ,.", max_size=30)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_no_sample_of_any_kind_survives_scrubbing(kind):
    @settings(max_examples=60, deadline=None)
    @given(before=filler, sample=SAMPLES[kind], after=filler)
    def check(before, sample, after):
        text = f"{before} {sample} {after}"
        clean, counts = scrub(text)
        assert sample not in clean and counts[kind] >= 1, (text, clean)
        assert f"[{kind.upper()}]" in clean
    check()


@pytest.mark.parametrize("text", [
    "Python 3.10.2 came out on 2024-03-15.",
    "Order #12345678 ships in 3 days; room 1234.",
    "1234 5678 9012 3456 fails the Luhn check.",
    "Meet at 12:30:45, it weighs 10.5 kg and costs $1,299.99.",
    "internationalization_and_localization_are_long_words",
    "The IP-like 999.1.1.1 and the version 1.2.3.4.5 are not addresses.",
    "Write to me at user at example dot com.",
])
def test_look_alikes_are_left_alone(text):
    assert scrub(text) == (text, {})


# ---- selection ------------------------------------------------------------------------------

actions = st.lists(st.tuples(
    st.sampled_from(["up", "down", "score", "correct", "flag", "regenerate"]),
    st.integers(0, 5),                          # which answer
    st.sampled_from([None, "ann", "cat"])),     # who: the local owner, a user, a curator
    max_size=25)


def feedback_db(actions_, consent_withheld: bool) -> tuple[Home, list[str]]:
    home = Home.resolve(tempfile.mkdtemp())
    init_db(home)
    with open_db(home) as db:
        ann = users.add_user(db, "ann")["id"]
        cat = users.add_user(db, "cat", "curator")["id"]
        who = {None: None, "ann": ann, "cat": cat}
        if consent_withheld:
            db["users"].update(ann, {"consent": 0})
        answers = []
        for i in range(6):
            conv = store.create_conversation(db, user_id=ann if i % 2 else None,
                                             system_prompt="Be kind." if i % 3 == 0 else None)
            q = store.add_message(db, conv, "user", f"question {i}")
            answers.append(store.add_message(db, conv, "assistant", f"answer {i}", q))
        for action, index, rater in actions_:
            answer = answers[index]
            if action in ("up", "down"):
                store.rate(db, answer, action, rater_id=who[rater])
            elif action == "score":
                store.rate(db, answer, None, score=5, rater_id=who[rater])
            elif action == "correct":
                store.add_correction(db, answer, f"better {index}", author_id=who[rater])
            elif action == "flag":
                store.set_flags(db, answer, ["pii"])
            else:
                parent = store.get_message(db, answer)
                answers.append(store.add_message(db, parent["conversation_id"], "assistant",
                                                 f"again {len(answers)}", parent["parent_id"]))
    return home, answers


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions_=actions, consent_withheld=st.booleans())
def test_every_example_traces_to_usable_messages_and_the_right_judgement(actions_,
                                                                        consent_withheld):
    home, _ = feedback_db(actions_, consent_withheld)
    with open_db(home) as db:
        examples = select(db)
        flagged = {r["message_id"] for r in db["flags"].rows}
        ann = users.get_user(db, "ann")["id"]
        for fmt, rows in examples.items():
            for e in rows:
                for message_id in e["message_ids"]:
                    message = store.get_message(db, message_id)
                    assert message["role"] == "assistant" and message_id not in flagged
                    assert message["conversation_id"] == e["conversation_id"]
                    owner = db["conversations"].get(e["conversation_id"])["user_id"]
                    assert not (consent_withheld and owner == ann)
                    assert e["prompt"] == store.history(db, message["parent_id"])
                if fmt == "kto":  # the judgement: a curator's latest, else the latest
                    ratings = list(db["ratings"].rows_where(
                        "message_id = ? AND rating IS NOT NULL", [e["message_ids"][0]],
                        order_by="id"))
                    by_curator = [r for r in ratings if r["rater_id"] != ann]
                    expected = (by_curator or ratings)[-1]["rating"] == "up"
                    assert e["label"] == expected


_MINILM = {}


def minilm(texts):
    """all-MiniLM-L6-v2 from its wheel, loaded once for the whole test session."""
    if "model" not in _MINILM:
        from trainer.dedup_pass import minilm_model
        _MINILM["model"] = minilm_model()
    return _MINILM["model"].encode(texts, normalize_embeddings=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions_=actions, share=st.floats(min_value=0.0, max_value=1.0))
def test_no_conversation_lands_on_both_sides_in_any_format(actions_, share):
    home, _ = feedback_db(actions_, consent_withheld=False)
    with open_db(home) as db:
        datasets, manifest = build(db, DataConfig(validation_share=share), embed=minilm)
    sides: dict[str, set] = {}
    for rows in datasets.values():
        for side, examples in rows.items():
            for e in examples:
                sides.setdefault(e["conversation_id"], set()).add(side)
    assert all(len(s) == 1 for s in sides.values())
    assert sum(f["train"] + f["validation"] for f in manifest["formats"].values()) == sum(
        len(r) for rows in datasets.values() for r in rows.values())


def test_curators_win_over_users_and_siblings_make_pairs(home):
    with open_db(home) as db:
        ann = users.add_user(db, "ann")["id"]
        cat = users.add_user(db, "cat", "curator")["id"]
        conv = store.create_conversation(db, user_id=ann)
        q = store.add_message(db, conv, "user", "2+2?")
        good = store.add_message(db, conv, "assistant", "4", q)
        bad = store.add_message(db, conv, "assistant", "5", q)
        store.rate(db, good, "down", rater_id=cat)
        store.rate(db, good, "up", rater_id=ann)     # later, but a user's: the curator wins
        store.rate(db, good, "up", rater_id=cat)     # the curator changes their mind
        store.rate(db, bad, "down", rater_id=ann)
        review.record_comparison(db, q, bad, good, "b", curator_id=cat)
        examples = select(db)
    assert [e["source"] for e in examples["sft"]] == ["liked"]
    assert sorted(e["source"] for e in examples["dpo"]) == ["liked_vs_disliked", "side_by_side"]
    assert all(e["chosen"][0]["content"] == "4" for e in examples["dpo"])
    assert sorted((e["completion"][0]["content"], e["label"]) for e in examples["kto"]) == [
        ("4", True), ("5", False)]


# ---- the pipeline ---------------------------------------------------------------------------

def test_cleaning_dedup_scrub_and_split(home):
    with open_db(home) as db:
        for _i, (question, answer) in enumerate([
                ("What is the capital of France?", "Paris."),
                ("What is the capital of France?", "Paris."),             # exact copy
                ("What's the capital of France?", "Paris."),              # near copy
                ("What is the capital of France ?", "It is Paris, on the Seine."),  # same q
                ("Email me at bob@example.com", "Sure, bob@example.com noted."),
                ("Tell me something", "   ")]):                          # empty answer
            conv = store.create_conversation(db)
            q = store.add_message(db, conv, "user", question)
            a = store.add_message(db, conv, "assistant", answer, q)
            store.rate(db, a, "up")
        long_conv = store.create_conversation(db, system_prompt="Be brief.")
        parent = None
        for turn in range(6):
            parent = store.add_message(db, long_conv, "user", f"long question {turn} " * 20, parent)
            parent = store.add_message(db, long_conv, "assistant", f"reply {turn}", parent)
        store.rate(db, parent, "up")
        count_words = lambda turns: sum(len(t["content"].split()) for t in turns)  # noqa: E731
        datasets, manifest = build(db, DataConfig(max_length=100, validation_share=0.5),
                                   count_tokens=count_words)
    sft = datasets["sft"]["train"] + datasets["sft"]["validation"]
    texts = [e["completion"][0]["content"] for e in sft]
    assert manifest["dropped"]["sft: exact duplicate"] == 1
    assert manifest["dropped"]["sft: near duplicate"] == 1
    assert manifest["dropped"]["sft: empty answer"] == 1
    assert "It is Paris, on the Seine." in texts and texts.count("Paris.") == 1
    paris = [e for e in sft if "France" in e["prompt"][-1]["content"]]
    assert len({e["group"] for e in paris}) == 1  # one group: one side of the split
    assert "Sure, [EMAIL] noted." in texts and manifest["scrubbed"]["sft"]["email"] == 2
    [long] = [e for e in sft if e["completion"][0]["content"] == "reply 5"]
    assert long["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert long["prompt"][-1]["content"].startswith("long question 5")
    assert count_words(long["prompt"]) + 2 <= 100 and len(long["prompt"]) < 12
    assert manifest["missing"]["sft"] == 20 - len(sft) and "dpo" in manifest["missing"]
    sides = {e["conversation_id"]: side for side, rows in datasets["sft"].items() for e in rows}
    assert len({sides[e["conversation_id"]] for e in paris}) == 1


@pytest.mark.slow  # a real server and a real client
def test_all_three_formats_from_feedback_sent_to_a_real_server(home, tiny_model_dir, tmp_path):
    config = ServeConfig(model=str(tiny_model_dir), port=0, poll_interval=0.1)
    with serve_in_thread(home, config) as (url, server):
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        page = Client(url, verbose=False)
        for i in range(4):  # through the API: thumbs, reasons, a correction
            reply = api.chat.completions.create(
                model="flywheel", max_tokens=12, temperature=1.0, seed=i,
                messages=[{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": f"Tell me fact number {i}."}])
            feedback = {"id": reply.id, "rating": "up" if i % 2 else "down", "reason": "clear"}
            if i == 0:
                feedback["correction"] = "Fact 0: water boils at 100 C at sea level."
            assert httpx.post(f"{url}/v1/feedback", json=feedback).status_code == 200
        # through the page: an answer and its regeneration, one liked and one not
        _, _, first = page.predict("Name a colour.", "", 1.0, 16, api_name="/send")
        _, _, second = page.predict(1.0, 16, api_name="/regenerate")
        page.predict(first["message_id"], "down", [], "", api_name="/rate")
        page.predict(second["message_id"], "up", [], "", api_name="/rate")
        # side by side: the base model against an adapter
        make_adapter(tiny_model_dir, adapters.staging_path(home, "ad-1"), seed=1)
        with open_db(home) as db:
            adapters.publish(db, home, "ad-1", base_model=server.service.model_name,
                             method="sft")
        both = page.predict("Say hi.", server.service.model_name, "ad-1", api_name="/compare")
        page.predict(both["prompt_id"], both["answer_a"], both["answer_b"], "a", api_name="/pick")
    out = tmp_path / "dpo.jsonl"
    assert main(["export", "--home", str(home.root), "--format", "dpo", "--out", str(out),
                 "--model", str(tiny_model_dir), "--report", str(tmp_path / "m.json")]) == 0
    dpo = [json.loads(line) for line in out.read_text().splitlines()]
    manifest = json.loads((tmp_path / "m.json").read_text())
    assert manifest["formats"]["dpo"]["sources"] == {
        "correction_vs_original": 1, "liked_vs_disliked": 1, "side_by_side": 1}
    assert len(dpo) == 3 and all(set(e) == {"prompt", "chosen", "rejected"} for e in dpo)
    assert set(manifest["formats"]) == {"dpo"}  # an export builds the format it writes
    expected = {"sft": {"correction": 1, "liked": 3}, "kto": {"thumbs": 6},
                "openai": {"correction": 1, "liked": 3}}
    for fmt in ("sft", "kto", "openai"):
        target, report = tmp_path / f"{fmt}.jsonl", tmp_path / f"{fmt}.json"
        assert main(["export", "--home", str(home.root), "--format", fmt, "--out", str(target),
                     "--no-length-check", "--report", str(report)]) == 0
        rows = [json.loads(line) for line in target.read_text().splitlines()]
        sources = json.loads(report.read_text())["formats"]["kto" if fmt == "kto" else "sft"]
        assert sources["sources"] == expected[fmt] and len(rows) == sum(expected[fmt].values())
        if fmt == "openai":
            assert rows[0]["messages"][-1]["role"] == "assistant"
        if fmt == "kto":
            assert {r["label"] for r in rows} == {True, False}


# ---- measuring length ------------------------------------------------------------------------

turn_lists = st.lists(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]),
                                         st.text(max_size=60)), min_size=1, max_size=5),
                      min_size=1, max_size=8)


def _check_token_counts(folder, lists):
    from transformers import AutoTokenizer

    from trainer.dataset import token_counter
    tokenizer, counter = AutoTokenizer.from_pretrained(folder), token_counter(folder)
    turns = [[{"role": r, "content": c} for r, c in chat] for chat in lists]
    exact = [len(tokenizer.apply_chat_template(t, return_dict=True)["input_ids"]) for t in turns]
    assert counter.many(turns) == exact and [counter(t) for t in turns] == exact


@settings(max_examples=30, deadline=None)
@given(lists=turn_lists)
def test_batched_token_counts_equal_the_rendered_chat_template(tiny_model_dir, lists):
    _check_token_counts(tiny_model_dir, lists)


@pytest.mark.slow
@pytest.mark.integration
def test_batched_token_counts_equal_smollm2s_chat_template(embedded_cache):
    from assistant import models
    folder = models.resolve(None, Home.resolve(embedded_cache)).folder
    words = "The capital of France is Paris. ¿Qué tal? 12 + 30 = 42\n- a list\n```py\nx=1\n```"
    rng = __import__("random").Random(0)
    lists = [[(rng.choice(["user", "assistant", "system"]),
               " ".join(rng.sample(words.split(" "), rng.randint(0, 8)))) for _ in range(k)]
             for k in range(1, 40)]
    _check_token_counts(folder, lists)
