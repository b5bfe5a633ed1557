"""Starting vLLM for `flywheel serve --engine vllm --vllm-python PATH`.

vLLM pins its own torch and transformers, so it lives in its own virtual environment and runs
as a child process of that environment's interpreter. Started here it listens on 127.0.0.1
only, with LoRA on and runtime adapter loading on (vLLM warns that those endpoints must stay
internal), and with a random API key that only this process knows. It serves the same model
folder, chat template and adapter files that the trainer uses.
"""

import os
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


class VllmStartError(RuntimeError):
    """vLLM did not come up; the message is one line for the user."""


@dataclass
class VllmProcess:
    proc: subprocess.Popen
    url: str
    api_key: str
    log_path: Path

    def stop(self, timeout: float = 30) -> None:
        """Ask vLLM to stop (SIGTERM), then kill it if it takes longer than `timeout`."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def command(python: str, model_folder: Path, served_name: str, port: int, *,
            max_lora_rank: int = 16, max_loras: int = 2, dtype: str = "auto",
            max_model_len: int | None = None, extra_args: tuple[str, ...] = ()) -> list[str]:
    """The command line that starts vLLM's OpenAI server on 127.0.0.1:`port`. (`python -m`:
    the `vllm` script looks for a distribution named vllm, which CPU builds are not.)"""
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_folder),
           "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
           "--dtype", dtype, "--enable-lora", "--max-lora-rank", str(max_lora_rank),
           "--max-loras", str(max_loras)]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    return cmd + list(extra_args)


def start(python: str, model_folder: Path, served_name: str, port: int, log_path: Path, *,
          timeout: float = 600, api_key: str | None = None, cpu_kv_cache_gib: int = 4,
          **options) -> VllmProcess:
    """Start vLLM and wait until /health answers (minutes on a CPU); its output goes to
    `log_path`. Its API key is `api_key`, else a new random one. Raises VllmStartError with
    the log's last line if it exits or times out."""
    if not Path(python).is_file():
        raise VllmStartError(f"--vllm-python {python} is not a file (the python of vLLM's venv)")
    api_key = api_key or secrets.token_urlsafe(24)
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_API_KEY": api_key}
    # vLLM's CPU build otherwise reserves 92% of the machine's memory for its KV cache and
    # refuses to start when less is free (seen here); GPU builds ignore this variable.
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kv_cache_gib))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command(python, model_folder, served_name, port, **options),
                                stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # a Ctrl+C reaches Flywheel, not vLLM
    process = VllmProcess(proc, f"http://127.0.0.1:{port}", api_key, log_path)
    started = time.monotonic()
    last_said = started
    while True:
        if proc.poll() is not None:
            raise VllmStartError(f"vLLM exited with {proc.returncode} while starting: "
                                 f"{_last_line(log_path)} (log: {log_path})")
        try:
            if httpx.get(f"{process.url}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        now = time.monotonic()
        if now - started > timeout:
            process.stop()
            raise VllmStartError(f"vLLM did not answer within {timeout:.0f} s "
                                 f"(vllm_start_timeout); log: {log_path}")
        if now - last_said > 15:
            print(f"waiting for vLLM to start ({now - started:.0f} s; log: {log_path})",
                  flush=True)
            last_said = now
        time.sleep(1)  # polling a process we started: no event to wait on


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"
