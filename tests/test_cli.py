import io
import json

import pytest
import torch

from flywheel.cli import main
from storage import adapters, open_db


def publish(home, adapter_id):
    staged = adapters.staging_path(home, adapter_id)
    (staged / "adapter_config.json").write_text("{}")
    with open_db(home) as db:
        adapters.publish(db, home, adapter_id, base_model="tiny", method="sft")


def test_adapters_list_promote_rollback(home, capsys):
    assert main(["adapters", "list", "--home", str(home.root)]) == 0
    assert "no adapters yet" in capsys.readouterr().out
    publish(home, "ad-1")
    publish(home, "ad-2")
    assert main(["adapters", "promote", "ad-1", "--home", str(home.root)]) == 0
    assert main(["adapters", "promote", "ad-2", "--home", str(home.root)]) == 0
    capsys.readouterr()
    assert main(["adapters", "list", "--json", "--home", str(home.root)]) == 0
    rows = {r["id"]: r["status"] for r in json.loads(capsys.readouterr().out)}
    assert rows == {"ad-1": "retired", "ad-2": "active"}
    with open_db(home) as db:  # as a server records them
        adapters.record_event(db, "ad-1", "served")
        adapters.record_event(db, "ad-2", "served")
        adapters.record_event(db, "ad-2", "refused", "SafetensorError: header too large")
    assert main(["adapters", "list", "--home", str(home.root)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["ad-1"].endswith("served by the server")
    assert lines["ad-2"].endswith("refused by the server: SafetensorError: header too large")
    assert main(["adapters", "rollback", "--home", str(home.root)]) == 0
    assert "ad-1 is now active" in capsys.readouterr().out


def test_bad_adapter_commands_exit_2_with_one_line(home, capsys):
    assert main(["adapters", "promote", "ad-nope", "--home", str(home.root)]) == 2
    assert capsys.readouterr().err.strip() == "flywheel: error: no adapter ad-nope"
    assert main(["adapters", "rollback", "--home", str(home.root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["flywheel: error: no adapter is active; nothing to roll back"]


def test_train_with_too_little_data_says_so(home, capsys, tiny_model_dir):
    assert main(["train", "--home", str(home.root), "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "not enough training data: 0 SFT examples" in out and "Nothing changed" in out


def test_keys_create_list_revoke(home, capsys):
    assert main(["keys", "list", "--home", str(home.root)]) == 0
    assert "no API keys yet" in capsys.readouterr().out
    assert main(["keys", "create", "carol", "--role", "curator", "--home", str(home.root)]) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert key.startswith("fw-") and len(key) > 40 and "shown once" in out.err
    assert main(["keys", "list", "--home", str(home.root)]) == 0
    listed = capsys.readouterr().out
    assert "carol  curator" in listed and "live" in listed and key not in listed
    assert main(["keys", "revoke", "1", "--home", str(home.root)]) == 0
    assert main(["keys", "list", "--home", str(home.root)]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["keys", "revoke", "9", "--home", str(home.root)]) == 2
    assert capsys.readouterr().err.strip() == "flywheel: error: no live API key with id 9"


def test_quantized_serving_without_a_gpu_exits_2_with_one_line(home, tiny_model_dir, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["serve", "--model", str(tiny_model_dir), "--quantize", "4bit",
                 "--home", str(home.root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["flywheel: error: 4bit loading needs a CUDA GPU; this machine has none"]


@pytest.mark.parametrize("limit, message", [
    ("quantize=16bit", "quantize must be one of 4bit, 8bit, not '16bit'"),
    ("engine=tgi", "engine must be one of local, vllm, not 'tgi'"),
    ("max_queued=many", "--limit max_queued takes an integer, not 'many'"),
    ("no_such_limit=1", "--limit takes NAME=VALUE with NAME a field of ServeConfig or "
                        "ThrottleConfig (assistant/config.py), not 'no_such_limit=1'"),
])
def test_a_bad_serve_setting_exits_2_with_one_line_before_loading_anything(home, capsys,
                                                                           limit, message):
    assert main(["serve", "--model", "no-such-model-is-loaded", "--home", str(home.root),
                 "--limit", limit]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"flywheel: error: {message}"]


def users_cmd(home, *args, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(["users", *args, "--home", str(home.root)])


def test_users_add_list_passwd_disable_enable(home, capsys, monkeypatch):
    from storage import users
    assert users_cmd(home, "add", "ann", "--role", "admin", "--password-stdin",
                     stdin="a long password\n", monkeypatch=monkeypatch) == 0
    assert "added ann (admin)" in capsys.readouterr().out
    assert users_cmd(home, "list") == 0
    assert "ann  admin  active" in capsys.readouterr().out
    assert users_cmd(home, "passwd", "ann", "--password-stdin", stdin="another password\n",
                     monkeypatch=monkeypatch) == 0
    with open_db(home) as db:
        assert users.check_password(db, "ann", "another password")["name"] == "ann"
        assert users.check_password(db, "ann", "a long password") is None
        assert users.has_admin(db)
    assert users_cmd(home, "disable", "ann") == 0
    with open_db(home) as db, pytest.raises(users.AccountDisabled, match="ann is disabled"):
        users.check_password(db, "ann", "another password")  # told only with the password
    with open_db(home) as db:
        assert users.check_password(db, "ann", "a long password") is None
    assert users_cmd(home, "enable", "ann") == 0
    capsys.readouterr()
    for args, stdin, message in (
            (("add", "ann", "--password-stdin"), "a long password\n", "already exists"),
            (("add", "bo", "--password-stdin"), "short\n", "at least 8 characters"),
            (("disable", "nobody"), None, "no user 'nobody'")):
        assert users_cmd(home, *args, stdin=stdin, monkeypatch=monkeypatch) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    with open_db(home) as db:
        assert users.get_user(db, "bo") is None  # nothing half-made


def test_serve_off_loopback_without_an_admin_exits_2_with_one_line(home, tiny_model_dir,
                                                                  capsys):
    assert main(["serve", "--model", str(tiny_model_dir), "--host", "0.0.0.0",
                 "--home", str(home.root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "without an admin account" in err[0]


def test_export_with_an_unknown_model_exits_2_and_writes_nothing(home, tmp_path, capsys):
    out = tmp_path / "x.jsonl"
    assert main(["export", "--format", "sft", "--out", str(out), "--model", "missing.gguf",
                 "--home", str(home.root)]) == 2
    assert capsys.readouterr().err.strip() == "flywheel: error: model file not found: missing.gguf"
    assert not out.exists()


def test_export_keeps_duplicates_only_when_asked_and_reuses_embeddings(home, tmp_path, capsys):
    from storage import chat as store
    with open_db(home) as db:
        for _i in range(3):  # the same question and answer three times, liked each time
            conv = store.create_conversation(db)
            q = store.add_message(db, conv, "user", "What is the boiling point of water?")
            a = store.add_message(db, conv, "assistant", "100 C at sea level.", q)
            store.rate(db, a, "up")
    rows = {}
    for flag in ([], ["--no-dedup"], []):
        out = tmp_path / "sft.jsonl"
        assert main(["export", "--home", str(home.root), "--format", "sft", "--out", str(out),
                     "--no-length-check", *flag]) == 0
        rows[bool(flag)] = len(out.read_text().splitlines())
    assert rows == {False: 1, True: 3}
    assert "exact duplicate" in capsys.readouterr().err
    from storage.embeddings import EmbeddingCache
    cache = EmbeddingCache.for_home(home, "all-MiniLM-L6-v2")
    assert len(cache.get(["What is the boiling point of water?", "100 C at sea level."])) == 2


def test_training_an_adapter_vllm_could_not_serve_exits_2_before_any_work(home, capsys):
    base = ["train", "--home", str(home.root), "--set", "vllm_max_lora_rank=8"]
    assert main(base) == 2  # the default rank, 16, is above it
    assert capsys.readouterr().err.strip() == (
        "flywheel: error: sft.lora_r 16 is above vLLM's --max-lora-rank 8 (vllm_max_lora_rank): "
        "vLLM could not serve the adapter")
    assert main(base + ["--set", "sft.lora_r=8", "--set", "dpo.lora_r=8", "--set", "kto.lora_r=8",
                        "--set", "sft.lora_target_modules=q_proj,lm_head"]) == 2
    assert "lm_head: vLLM serves LoRA on the linear layers only" in capsys.readouterr().err
    with open_db(home) as db:
        assert db["training_runs"].count == 0  # refused before a run was started
