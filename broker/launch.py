"""A `broker serve` subprocess on a config of its own, for `broker bench` and the tests.

`ServeProcess` writes the TOML config into its directory, starts ``python -m
broker serve`` with its output appended to ``broker.log`` there, waits until
every pool holds ``min_size`` connections, and stops it with SIGTERM.

Invariants a reader needs first:

- The child gets this process's environment without ``$BROKER_*``: those would
  override the config file, and this broker is its caller's alone.
- Every wait is bounded; a broker that does not drain in time is killed, and
  `stop` then raises so the caller hears of it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import client

START_TIMEOUT = 30.0
STOP_TIMEOUT = 40.0  # above the default drain_timeout (30 s)


class LaunchError(Exception):
    """The broker exited or did not come up; the message says which."""


def toml_value(value: Any) -> str:
    """Return value as TOML: a JSON string, number, bool or list reads the same."""
    return json.dumps(value, ensure_ascii=False)


def config_text(
    broker: Mapping[str, Any], pools: Mapping[str, Mapping[str, Any]]
) -> str:
    """Return the TOML of a ``[broker]`` table and ``[pools.NAME]`` tables."""
    lines = ["[broker]", *(f"{k} = {toml_value(v)}" for k, v in broker.items())]
    for name, keys in pools.items():
        lines += ["", f"[pools.{name}]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


class ServeProcess:
    """A `broker serve` subprocess with its own config, socket and log in workdir.

    ``endpoint`` is where it is asked whether it is ready, so it must be one the
    config binds. ``own_session`` keeps a terminal's Ctrl-C from reaching it,
    for callers that stop it themselves on Ctrl-C.
    """

    def __init__(
        self,
        workdir: Path,
        endpoint: str,
        *,
        flags: Sequence[str] = (),
        own_session: bool = False,
    ) -> None:
        self.workdir = workdir
        self.endpoint = endpoint
        self.config_path = workdir / "broker.toml"
        self.log_path = workdir / "broker.log"
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, str] = {}  # added to the child's environment
        self._flags = tuple(flags)
        self._own_session = own_session

    @property
    def pid(self) -> int:
        """Return the broker's process id."""
        assert self.proc is not None, "not started"  # noqa: S101  a caller's bug
        return self.proc.pid

    def write(
        self, broker: Mapping[str, Any], pools: Mapping[str, Mapping[str, Any]]
    ) -> None:
        """Write the config the broker reads (again on SIGHUP)."""
        self.config_path.write_text(config_text(broker, pools))

    def start(self) -> None:
        """Start `broker serve` on the written config; do not wait for it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        env.update(self.env)
        argv = [sys.executable, "-m", "broker", "serve"]
        argv += ["--config", str(self.config_path), *self._flags]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603  our own interpreter and argv
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=self._own_session,
            )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until every pool holds min_size connections or is unreachable.

        Raises:
            LaunchError: the broker exited, or was not ready within timeout.
        """
        assert self.proc is not None, "not started"  # noqa: S101  a caller's bug
        deadline = time.monotonic() + timeout
        with client.Client(endpoint=self.endpoint, timeout=0.5) as probe:
            while self.proc.poll() is None:
                try:
                    pools = probe.stats()["pools"].values()
                except client.BrokerUnavailable:
                    pools = None  # not listening yet
                if pools is not None and all(
                    p["size"] >= p["min_size"] or p["unreachable"] for p in pools
                ):
                    return
                if time.monotonic() > deadline:
                    raise LaunchError(
                        f"the broker did not come up within {timeout:g} s"
                    )
                time.sleep(0.05)
        raise LaunchError(f"the broker exited with status {self.proc.returncode}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM the broker and return its exit code.

        Raises:
            subprocess.TimeoutExpired: it did not drain within timeout and was
                killed.
        """
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def log(self) -> str:
        """Return what the broker logged."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
