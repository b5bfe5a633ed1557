import subprocess
import sys
import time

import pytest
import torch

from assistant import models
from storage import Home


def test_local_folder_loads_on_cpu_in_fp32(tiny_model_dir, home):
    base = models.resolve(str(tiny_model_dir), home)
    assert base.folder == tiny_model_dir.resolve()
    model, tokenizer = models.load(base)
    assert model.device.type == "cpu" and model.dtype == torch.float32
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                        add_generation_prompt=True, return_dict=True,
                                        return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5 or out[0, -1].item() == 2


@pytest.mark.parametrize("spec, message", [
    ("missing.gguf", "model file not found"),
    ("./no/such/folder", "model not found"),
    ("no-such-org/no-such-model-xyz", "cannot fetch model"),
])
def test_bad_specs_give_one_clear_error(spec, message, home):
    with pytest.raises(models.ModelError, match=message):
        models.resolve(spec, home)


def test_folder_without_config_is_refused(tmp_path, home):
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.ModelError, match="no config.json"):
        models.resolve(str(tmp_path / "empty"), home)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["missing.gguf", "no-such-org/no-such-model-xyz"])
def test_serve_with_an_unknown_model_exits_2_with_one_line(spec, tmp_path):
    result = subprocess.run([sys.executable, "-m", "flywheel.cli", "serve", "--model", spec,
                             "--home", str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("flywheel: error:"), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.integration
def test_embedded_model_is_converted_once_then_loaded_from_cache(embedded_cache, capsys):
    home = Home.resolve(embedded_cache)
    capsys.readouterr()
    started = time.perf_counter()
    base = models.resolve(None, home)
    assert time.perf_counter() - started < 5  # a hash and a lookup, not a conversion
    assert "Converting" not in capsys.readouterr().out
    assert base.name == "SmolLM2-135M-Instruct"
    assert (base.folder / "model.safetensors").is_file()
    assert base.folder.parent == home.models_dir
    model, tokenizer = models.load(base)
    ids = tokenizer.apply_chat_template([{"role": "user",
                                          "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_dict=True,
                                        return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
