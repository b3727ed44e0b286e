"""A real OpenAI-compatible server for protocol tests: `transformers serve` (the `serving` extra) on CPU.

The fake server in fake_openai.py injects faults; this one says what a real server does with the
requests the builder sends. It serves a model folder the test builds (no hub access), on a free loopback
port, in its own process, and keeps its log so a test can read what the server itself said.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from conftest import free_port

# The `transformers` console script, run by this interpreter (the venv's), whatever PATH says.
SERVE_MAIN = "import sys; from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; main()"
SERVING_MODULES = ("fastapi", "uvicorn", "openai")  # what `transformers serve` imports beyond transformers
# A plain template: the prompt is the only user message, so chat and completions see the same text.
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


class ServerDidNotStart(RuntimeError):
    """The server exited or did not answer /health in time; the message ends with its log's tail."""


def serving_missing() -> str | None:
    """Why `transformers serve` cannot run here, or None when the `serving` extra is installed."""
    missing = [name for name in SERVING_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        return f"transformers[serving] is not installed (no {', '.join(missing)}): pip install -e '.[serving]'"
    return None


def prepare_for_serving(model_dir: Path) -> None:
    """Give a freshly built tiny model what a served hub model has: a chat template and sampling on.

    `transformers serve` samples only when the model's generation config says `do_sample`; without it a
    temperature is accepted and every answer is greedy (and identical), which a hub chat model never is.
    """
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(model_dir)
    generation = GenerationConfig.from_pretrained(model_dir)
    generation.do_sample = True
    generation.save_pretrained(model_dir)


@dataclass
class RealServer:
    process: subprocess.Popen
    base_url: str
    model: str
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        """Stop the server (its process group: uvicorn may start helpers) and wait for it."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_transformers_serve(model_dir: Path, log_path: Path, timeout: float = 120.0) -> RealServer:
    """Serve `model_dir` (pinned: the only model, loaded before the port opens) and wait until it answers."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-c", SERVE_MAIN, "serve", str(model_dir), "--host", "127.0.0.1", "--port",
               str(port), "--device", "cpu", "--dtype", "float32"]
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                   preexec_fn=_die_with_parent)
    server = RealServer(process, f"http://127.0.0.1:{port}/v1", str(model_dir), log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerDidNotStart(f"transformers serve exited with code {process.returncode}:\n"
                                    f"{server.log_text()[-3000:]}")
        if _healthy(port):
            return server
        time.sleep(0.2)
    server.stop()
    raise ServerDidNotStart(f"transformers serve did not answer within {timeout:g} s:\n{server.log_text()[-3000:]}")


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGTERM when the test process dies, so no server outlives a
    killed test run (its own session keeps it out of the terminal's signals)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
