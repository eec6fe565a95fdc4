"""Running ``llama_cpp.server`` (llama-cpp-python's server extra) as a child process.

A remote inference tier in miniature, on loopback: the tests and ``interest
bench inference --backend openai`` start one server for generation and one
for embeddings (llama.cpp cannot generate from a context created for
embeddings, and llama_cpp.server holds one model at a time), from the same
GGUF file, and stop them afterwards. The embedding server is told to
mean-pool (the GGUF key ``llama.pooling_type``, overridden), as the
in-process backend does.

``LlamaServer.start()`` waits, with a bounded poll of ``GET /v1/models``,
until the model is loaded and the server answers; if the process exits or
the time runs out first it raises ``ModelUnavailable`` with the end of the
server's log.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from interest.engine.errors import ModelUnavailable

MEAN_POOLING = "llama.pooling_type=int:1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    """One ``python -m llama_cpp.server`` process on 127.0.0.1."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        embedding: bool = False,
        n_ctx: int = 2048,
        n_threads: int = 2,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.model_path = Path(model_path)
        self.embedding = embedding
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.args = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path),
            "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(n_ctx),
            "--n_threads", str(n_threads), "--n_threads_batch", str(n_threads),
        ]
        if embedding:
            self.args += ["--embedding", "true", "--kv_overrides", MEAN_POOLING]
        self.args += list(extra_args)
        self._log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
        self.proc: subprocess.Popen | None = None

    def launch(self) -> LlamaServer:
        """Start the process (returns at once; see ``wait_ready``)."""
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout_s: float = 90.0) -> LlamaServer:
        """Poll ``GET /v1/models`` until it answers 200; ``ModelUnavailable`` if the
        process exits or ``timeout_s`` passes first (the process is then stopped)."""
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise ModelUnavailable(f"llama_cpp.server exited with {self.proc.returncode}: "
                                           f"{self.log_tail()}")
                try:
                    if client.get(f"{self.url}/models").status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise ModelUnavailable(f"llama_cpp.server not ready after {timeout_s:g}s: {self.log_tail()}")

    def start(self, timeout_s: float = 90.0) -> LlamaServer:
        return self.launch().wait_ready(timeout_s)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return Path(self._log.name).read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        self._log.close()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass

    def __enter__(self) -> LlamaServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def start_pair(model_path: str | os.PathLike, embed_path: str | os.PathLike | None = None, *,
               n_ctx: int = 2048, embed_ctx: int = 512, n_threads: int = 2,
               timeout_s: float = 90.0) -> tuple[LlamaServer, LlamaServer]:
    """A generation server and an embedding server, started side by side."""
    gen = LlamaServer(model_path, n_ctx=n_ctx, n_threads=n_threads)
    emb = LlamaServer(embed_path or model_path, embedding=True, n_ctx=embed_ctx, n_threads=n_threads)
    try:
        gen.launch()
        emb.launch()
        gen.wait_ready(timeout_s)
        emb.wait_ready(timeout_s)
    except BaseException:
        gen.stop()
        emb.stop()
        raise
    return gen, emb
