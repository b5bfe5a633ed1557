import threading

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import SafetensorError

from assistant import models
from assistant.engine import Engine
from assistant.inference import GenerationParams, RequestError
from tests.conftest import make_adapter

GREEDY = GenerationParams(temperature=0.0, max_tokens=12)
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def engine(tiny_model_dir, home):
    base = models.resolve(str(tiny_model_dir), home)
    model, tokenizer = models.load(base)
    engine = Engine(model, tokenizer, base.name)
    yield engine
    engine.close()


def run(engine, adapter="active"):
    stream = engine.chat(HELLO, GREEDY, adapter=adapter)
    pieces = list(stream)
    return "".join(pieces), stream.result


def test_stream_pieces_add_up_to_the_stored_result(engine):
    text, result = run(engine)
    assert text == result.text
    assert result.completion_tokens > 0 and result.prompt_tokens > 0
    assert result.finish_reason in ("stop", "length") and result.adapter_id is None


def test_cancel_stops_early_and_marks_interrupted(engine):
    stream = engine.chat(HELLO, GenerationParams(temperature=0.0, max_tokens=400))
    stream.cancel()
    list(stream)
    assert stream.result.finish_reason == "interrupted"
    assert stream.result.completion_tokens < 400


def test_activated_adapter_serves_new_requests_and_base_stays_reachable(engine, tiny_model_dir,
                                                                        tmp_path):
    base_text, _ = run(engine)
    path = make_adapter(tiny_model_dir, tmp_path / "ad-a", seed=1)
    assert engine.activate("ad-a", path).result(timeout=60) == "ad-a"
    text, result = run(engine)
    assert result.adapter_id == "ad-a" and text != base_text
    pinned_base, result = run(engine, adapter=None)
    assert result.adapter_id is None and pinned_base == base_text


def test_request_keeps_the_adapter_it_started_with(engine, tiny_model_dir, tmp_path):
    path = make_adapter(tiny_model_dir, tmp_path / "ad-a", seed=1)
    before = engine.chat(HELLO, GREEDY)         # running when the swap comes
    next(iter(before), None)
    swap = engine.activate("ad-a", path)
    after = engine.chat(HELLO, GREEDY)          # queued after it
    list(before), list(after)
    swap.result(timeout=60)
    assert before.result.adapter_id is None
    assert after.result.adapter_id == "ad-a"


def test_a_swap_goes_ahead_of_queued_requests(engine, tiny_model_dir, tmp_path):
    """A promotion waits for the job that is running, not for every request queued."""
    path = make_adapter(tiny_model_dir, tmp_path / "ad-a", seed=1)
    hold = threading.Event()
    engine._submit(hold.wait)  # the worker is busy (as with a long batch) while others queue
    queued = [engine.chat(HELLO, GenerationParams(temperature=0.0, max_tokens=4, seed=i))
              for i in range(3)]
    swap = engine.activate("ad-a", path)
    hold.set()
    swap.result(timeout=60)
    for stream in queued:
        list(stream)
    assert [s.result.adapter_id for s in queued] == ["ad-a"] * 3


def test_a_swap_does_not_wait_for_a_long_answer_to_end(engine, tiny_model_dir, tmp_path):
    """The running batch pauses between two tokens for the swap and then goes on: the long
    answer keeps its adapter and its text, and what comes after the swap gets the new one.
    Adapters a paused row uses stay loaded, whatever the swap would evict."""
    long_params = GenerationParams(temperature=0.0, max_tokens=400)
    pinned = make_adapter(tiny_model_dir, tmp_path / "ad-pinned", seed=1)
    new = {name: make_adapter(tiny_model_dir, tmp_path / name, seed) for name, seed in
           (("ad-a", 2), ("ad-b", 3))}
    alone = engine.chat(HELLO, long_params, adapter="ad-pinned", adapter_path=pinned)
    alone_text = "".join(alone)
    assert alone.result.completion_tokens == 400, "this adapter's answer must be long"
    engine.max_loaded_adapters = 1  # any swap now evicts every adapter it may
    long = engine.chat(HELLO, long_params, adapter="ad-pinned", adapter_path=pinned)
    pieces = iter(long)
    first = next(pieces)  # under way
    for name, path in new.items():
        swap = engine.activate(name, path)
        assert swap.result(timeout=60) == name
        assert long.error is None, f"the paused answer failed: {long.error!r}"
        assert not long.done.is_set(), "the swap waited for the running answer to end"
    _, after = run(engine)
    assert after.adapter_id == "ad-b"
    assert first + "".join(pieces) == alone_text
    assert long.result.adapter_id == "ad-pinned" and long.result.completion_tokens == 400


def test_an_adapter_in_an_old_ones_place_answers_as_when_loaded_alone(engine, tiny_model_dir,
                                                                     home, tmp_path):
    """Past `max_loaded_adapters` (2), a new adapter's weights go into the least recently used
    one's place (PEFT's hot-swap) and the model holds two adapters, not more. Every adapter
    answers exactly as it does in an engine that has only it: one of another rank on fewer
    modules (the place's other modules zeroed), and one PEFT cannot hot-swap (another
    dropout: loaded anew)."""
    paths = {f"ad-{n}": make_adapter(tiny_model_dir, tmp_path / f"ad-{n}", seed=n)
             for n in (1, 2, 3)}
    for name, config in {"ad-q": LoraConfig(r=8, target_modules=["q_proj"]),
                         "ad-dropout": LoraConfig(r=4, target_modules="all-linear",
                                                  lora_dropout=0.1)}.items():
        model, _ = models.load(models.BaseModel("tiny", tiny_model_dir))
        torch.manual_seed(4)
        config.init_lora_weights = False
        get_peft_model(model, config).save_pretrained(tmp_path / name)
        paths[name] = tmp_path / name
    alone = {}
    for name, path in paths.items():
        base = models.resolve(str(tiny_model_dir), home)
        only = Engine(*models.load(base), base.name)
        only.activate(name, path).result(timeout=60)
        alone[name] = run(only)[0]
        only.close()
    assert len(set(alone.values())) == len(paths), "the adapters must answer differently"
    for name in paths:
        engine.activate(name, paths[name]).result(timeout=60)
        assert run(engine)[0] == alone[name], name
    assert len(engine.model.peft_config) == 2
    for name in ("ad-q", "ad-1"):  # the one before (still loaded), one evicted (reloaded)
        stream = engine.chat(HELLO, GREEDY, adapter=name, adapter_path=paths[name])
        assert "".join(stream) == alone[name] and stream.result.adapter_id == name


def test_an_adapter_with_non_finite_weights_is_refused(engine, tiny_model_dir, tmp_path):
    """The smoke test checks every step's logits: NaN weights never reach a user."""
    good = make_adapter(tiny_model_dir, tmp_path / "ad-good", seed=1)
    engine.activate("ad-good", good).result(timeout=60)
    model, _ = models.load(models.BaseModel("tiny", tiny_model_dir))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.fill_(float("nan"))
    peft_model.save_pretrained(tmp_path / "ad-nan")
    with pytest.raises(ValueError, match="non-finite logits"):
        engine.activate("ad-nan", tmp_path / "ad-nan").result(timeout=60)
    assert engine.active_adapter == "ad-good"
    assert run(engine)[1].adapter_id == "ad-good"


def test_broken_adapter_is_refused_and_the_old_one_keeps_serving(engine, tiny_model_dir,
                                                                 tmp_path):
    good = make_adapter(tiny_model_dir, tmp_path / "ad-good", seed=1)
    engine.activate("ad-good", good).result(timeout=60)
    corrupt = make_adapter(tiny_model_dir, tmp_path / "ad-corrupt", seed=2)
    (corrupt / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SafetensorError, match="deserializing header"):
        engine.activate("ad-corrupt", corrupt).result(timeout=60)
    missing = tmp_path / "ad-missing"
    missing.mkdir()
    with pytest.raises(FileNotFoundError):
        engine.activate("ad-missing", missing).result(timeout=60)
    assert engine.active_adapter == "ad-good"
    _, result = run(engine)
    assert result.adapter_id == "ad-good"


def test_concurrent_requests_are_batched_and_match_one_at_a_time(engine, tiny_model_dir,
                                                                 tmp_path):
    """Eight queued requests (different prompts, lengths and adapters) run as one batch and
    each gets exactly what it gets alone: padding and mixed adapters do not leak across rows."""
    engine.activate("ad-a", make_adapter(tiny_model_dir, tmp_path / "ad-a", seed=1)).result(60)
    prompts = [[{"role": "user", "content": "hi" * (i + 1)}] for i in range(8)]
    adapters = ["ad-a" if i % 2 else None for i in range(8)]
    params = [GenerationParams(temperature=0.0, max_tokens=6 + i) for i in range(8)]
    alone = []
    for p, a, g in zip(prompts, adapters, params):
        stream = engine.chat(p, g, adapter=a)
        alone.append(("".join(stream), stream.result))
    hold = threading.Event()
    gate = engine._submit(hold.wait)  # the worker waits until all 8 are queued
    streams = [engine.chat(p, g, adapter=a) for p, a, g in zip(prompts, adapters, params)]
    hold.set()
    gate.result(10)
    batched = [("".join(s), s.result) for s in streams]
    assert [t for t, _ in batched] == [t for t, _ in alone]
    assert [r.adapter_id for _, r in batched] == adapters
    assert [r.completion_tokens for _, r in batched] == [r.completion_tokens for _, r in alone]
    assert engine.batches_run[-1] == 8


def test_stop_strings_cut_the_answer_and_never_stream_past_it(engine):
    _, full = run(engine)
    assert len(full.text) > 4
    stop = full.text[3:5]
    stream = engine.chat(HELLO, GenerationParams(temperature=0.0, max_tokens=12, stop=[stop]))
    text = "".join(stream)
    assert stream.result.text == text == full.text[:full.text.find(stop)].rstrip()
    assert stream.result.finish_reason == "stop"


def test_same_seed_same_sample(engine):
    params = GenerationParams(temperature=1.0, max_tokens=16, seed=7)
    first = engine.chat(HELLO, params)
    second = engine.chat(HELLO, params)
    other = engine.chat(HELLO, GenerationParams(temperature=1.0, max_tokens=16, seed=8))
    texts = ["".join(s) for s in (first, second, other)]
    assert texts[0] == texts[1] != texts[2]


@pytest.mark.parametrize("params, param", [
    (GenerationParams(max_tokens=0), "max_tokens"),
    (GenerationParams(max_tokens=5000), "max_tokens"),
    (GenerationParams(temperature=3.0), "temperature"),
    (GenerationParams(top_p=0.0), "top_p"),
    (GenerationParams(stop=["a", "b", "c", "d", "e"]), "stop"),
])
def test_bad_parameters_are_refused_before_anything_runs(engine, params, param):
    with pytest.raises(RequestError) as info:
        engine.check(HELLO, params)
    assert info.value.param == param


def test_a_conversation_longer_than_the_context_is_refused(engine):
    assert engine.context_length == 512  # the tiny model's
    engine.check([{"role": "user", "content": "x" * 200}], GenerationParams(max_tokens=100))
    with pytest.raises(RequestError, match="exceeds the model's context of 512") as info:
        engine.check([{"role": "user", "content": "x" * 450}], GenerationParams(max_tokens=100))
    assert info.value.code == "context_length_exceeded"


def test_a_request_joins_a_running_batch_instead_of_waiting_for_it(engine):
    """Continuous batching: a short request that arrives while a long one is generating gets
    its answer before the long one ends, and both answers are what they would be alone."""
    long_params = GenerationParams(temperature=0.0, max_tokens=300)
    short_params = GenerationParams(temperature=0.0, max_tokens=5)
    short_prompt = [{"role": "user", "content": "bye"}]
    long_alone = "".join(engine.chat(HELLO, long_params))
    short_alone = "".join(engine.chat(short_prompt, short_params))

    long = engine.chat(HELLO, long_params)
    pieces = iter(long)
    first = next(pieces)  # the long answer is under way
    short = engine.chat(short_prompt, short_params)
    short_text = "".join(short)
    assert not long.done.is_set()  # answered while the long one still runs
    assert short_text == short_alone and short.result.finish_reason == "length"
    assert first + "".join(pieces) == long_alone
    assert long.result.completion_tokens == 300


def test_a_full_queue_says_busy_instead_of_queueing_forever(engine):
    engine.max_queued = 2
    hold = threading.Event()
    gate = engine._submit(hold.wait)  # the worker is busy while two requests queue
    waiting = [engine.chat(HELLO, GREEDY), engine.chat(HELLO, GREEDY)]
    with pytest.raises(RequestError, match="busy") as info:
        engine.check(HELLO, GREEDY)
    assert info.value.status == 503
    hold.set()
    gate.result(5)
    for stream in waiting:
        list(stream)
    assert engine.check(HELLO, GREEDY) > 0  # room again


def test_an_answer_cut_inside_a_character_never_ends_in_a_replacement_mark(engine):
    # The tiny model writes random bytes, so a token limit often falls inside a UTF-8
    # character; the stored (and streamed) answer ends before that half character.
    endings = []
    for seed in range(24):
        stream = engine.chat(HELLO, GenerationParams(temperature=1.0, max_tokens=7, seed=seed))
        text = "".join(stream)
        assert text == stream.result.text
        endings.append(stream.result.text[-1:])
    assert "\ufffd" not in endings


def test_a_slow_store_never_holds_up_the_next_answer(engine):
    """Storing an answer (a database write) runs beside the model, not on its thread: while
    one answer's store hangs, the next answer is generated and ends; the first still ends
    only once it is stored, so whoever saw its end may rate it."""
    storing, release = threading.Event(), threading.Event()

    def slow_store(result):
        storing.set()
        release.wait(60)

    first = engine.chat(HELLO, GREEDY, on_finish=slow_store)
    assert storing.wait(60)  # generated; its store hangs
    second = engine.chat(HELLO, GREEDY)
    try:
        assert second.done.wait(30), "the store of one answer held up the next"
        assert not first.done.is_set()
    finally:
        release.set()
    assert first.done.wait(30) and first.result.text == second.result.text


def test_a_closed_engine_keeps_what_ran_and_refuses_what_comes(engine, tiny_model_dir,
                                                               tmp_path):
    stored = []
    running = engine.chat(HELLO, GenerationParams(temperature=0.0, max_tokens=400),
                          on_finish=stored.append)
    queued = engine.chat(HELLO, GenerationParams(temperature=0.0, max_tokens=400, seed=1),
                         on_finish=stored.append)  # a seed runs alone: it waits its turn
    next(iter(running))
    engine.close()
    assert running.done.is_set() and queued.done.is_set()
    assert [s.result.finish_reason for s in (running, queued)] == ["interrupted"] * 2
    assert 0 < running.result.completion_tokens < 400 and queued.result.completion_tokens == 0
    assert sorted(stored, key=id) == sorted([running.result, queued.result], key=id)
    for refused in (lambda: engine.check(HELLO, GREEDY), lambda: engine.chat(HELLO, GREEDY),
                    lambda: engine.activate("ad-a", tmp_path).result(5)):
        with pytest.raises(RequestError, match="shutting down") as info:
            refused()
        assert info.value.status == 503
