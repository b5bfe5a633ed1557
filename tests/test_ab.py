"""An A/B split through the real server: a share of new conversations is answered by the
candidate, each conversation stays on its side, and the thumbs-up rates are compared."""

import httpx

from flywheel.cli import main
from storage import ab, adapters, open_db
from tests.conftest import client, make_adapter, wait_for


def publish(home, tiny_model_dir, adapter_id, seed):
    make_adapter(tiny_model_dir, adapters.staging_path(home, adapter_id), seed=seed)
    with open_db(home) as db:
        adapters.publish(db, home, adapter_id, base_model="tiny-model0", method="sft")


def test_a_share_of_new_conversations_goes_to_the_candidate(api_server, tiny_model_dir, capsys):
    url, srv, home = api_server
    publish(home, tiny_model_dir, "ad-live", seed=1)
    publish(home, tiny_model_dir, "ad-new", seed=2)
    with open_db(home) as db:
        adapters.promote(db, "ad-live")
    # The control arm is whatever the server serves: wait for its watcher to swap ad-live in.
    wait_for(lambda: httpx.get(f"{url}/healthz").json()["adapter"] == "ad-live", timeout=60)
    assert main(["adapters", "ab", "ad-new", "--share", "0.5", "--home", str(home.root)]) == 0
    assert "50% of new conversations now go to ad-new" in capsys.readouterr().out
    api = client(url)
    answered = {}
    for i in range(24):
        reply = api.chat.completions.create(
            model="flywheel", max_tokens=4, temperature=0,
            messages=[{"role": "user", "content": f"hello {i}"}])
        with open_db(home) as db:
            conversation = db["messages"].get(reply.id)["conversation_id"]
        expected = "ad-new" if ab.in_candidate_arm(conversation, 0.5) else "ad-live"
        assert reply.model == expected
        answered[reply.id] = reply.model
        rating = "up" if reply.model == "ad-new" else ("up" if i % 2 else "down")
        api.post("/feedback", cast_to=object, body={"id": reply.id, "rating": rating})
    arms = list(answered.values())
    assert 4 <= arms.count("ad-new") <= 20  # about half, by a hash of the conversation id
    pinned = api.chat.completions.create(model="ad-live", max_tokens=4,
                                         messages=[{"role": "user", "content": "hi"}])
    assert pinned.model == "ad-live"  # a pinned version is never redirected
    with open_db(home) as db:
        report = ab.report(db)
    assert report["candidate"]["answers"] == arms.count("ad-new")
    assert report["candidate"]["up_rate"] == 1.0
    assert report["control"]["up"] + report["control"]["down"] == arms.count("ad-live")
    assert main(["adapters", "ab", "--home", str(home.root)]) == 0
    out = capsys.readouterr().out
    assert f"candidate  ad-new  answers {arms.count('ad-new')}" in out and "up rate 100%" in out
    assert "95% " in out and ("beyond chance" in out or "no significant difference" in out)
    # Promoting the candidate ends the split; everyone gets it.
    assert main(["adapters", "promote", "ad-new", "--home", str(home.root)]) == 0
    with open_db(home) as db:
        assert ab.current(db) is None


def test_only_a_candidate_can_be_split_and_a_rejected_one_needs_force(home, tiny_model_dir,
                                                                      capsys):
    publish(home, tiny_model_dir, "ad-bad", seed=3)
    with open_db(home) as db:
        db["adapters"].update("ad-bad", {"status": "rejected", "metrics":
                                         '{"gate": {"reason": "rejected: forgetting +40%"}}'})
    assert main(["adapters", "ab", "ad-bad", "--home", str(home.root)]) == 2
    assert "ad-bad is rejected; only a candidate can be A/B tested" in capsys.readouterr().err
    assert main(["adapters", "promote", "ad-bad", "--home", str(home.root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rejected by the evaluation gate (rejected: forgetting +40%)" in err[0]
    assert main(["adapters", "promote", "ad-bad", "--force", "--home", str(home.root)]) == 0
    assert main(["adapters", "ab", "--share", "1.5", "ad-bad", "--home", str(home.root)]) == 2
    assert "between 0 and 1" in capsys.readouterr().err


def test_the_ab_report_says_whether_a_difference_is_beyond_chance():
    assert ab.wilson(8, 10) == [0.49, 0.943]  # the textbook Wilson interval
    assert ab.wilson(0, 0) is None
    clear = {"candidate": {"up": 40, "down": 10, "up_rate": 0.8},
             "control": {"up": 20, "down": 30, "up_rate": 0.4}}
    clear["p_value"] = ab.difference_p_value(clear["candidate"], clear["control"])
    assert clear["p_value"] < 0.001
    assert ab.verdict(clear).startswith("the candidate is better beyond chance")
    close = {"candidate": {"up": 6, "down": 4, "up_rate": 0.6},
             "control": {"up": 5, "down": 5, "up_rate": 0.5}}
    close["p_value"] = ab.difference_p_value(close["candidate"], close["control"])
    assert ab.verdict(close).startswith("no significant difference yet")
    assert ab.difference_p_value({"up": 0, "down": 0}, close["control"]) is None
