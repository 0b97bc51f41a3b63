"""Run a replicated deployment: N vLLM replicas, vllm-router in front, and restart what dies.

`Supervisor.start()` starts every replica at once, waits until each answers /health, then
starts vllm-router on loopback and waits for it. A watcher thread restarts a replica that
exits (a crash, an OOM kill) with a growing pause between attempts; the gateway notices it is
gone through its /metrics, takes it out of the router, and puts it back once it is warm
(cloud/gateway/pool.py). If vllm-router itself exits, the deployment cannot serve: `died` is
set and the launcher stops the gateway.

Every replica gets the same fresh `VLLM_API_KEY` through its environment, never its argv.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO

from cloud.launch import LaunchError, VllmCommand, VllmProcess, stop_process_group
from cloud.replicas import Deployment, RouterCommand

__all__ = ["ReplicaStatus", "Supervisor"]


@dataclass(slots=True)
class ReplicaStatus:
    """One replica's process and how often it was restarted."""

    index: int
    command: VllmCommand
    process: VllmProcess
    restarts: int = 0
    last_start: float = field(default_factory=time.monotonic)


class Supervisor:
    """The replicas and the router as child processes."""

    def __init__(
        self,
        deployment: Deployment,
        *,
        secret_env: dict[str, str],
        log: IO[bytes] | None = None,
        say: object = None,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.deployment = deployment
        self._secret_env = secret_env
        self._log = log
        self._say = say if callable(say) else (lambda text: print(text, file=sys.stderr))
        self.max_backoff_s = max_backoff_s
        self.replicas = [
            ReplicaStatus(i, c, VllmProcess(c, log=log, secret_env=secret_env))
            for i, c in enumerate(deployment.replicas)
        ]
        self.router: subprocess.Popen[bytes] | None = None
        self.died = threading.Event()
        """vllm-router exited: nothing can serve (the launcher stops the gateway)."""
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # --- start ---------------------------------------------------------------------------

    def start(self, timeout_s: float = 600.0) -> None:
        """Start every replica and the router; LaunchError if one cannot start."""
        for status in self.replicas:
            status.process.start()
            assert status.process.process is not None
            where = status.command.uds or status.command.url
            self._say(f"replica {status.index}: vLLM pid {status.process.process.pid} on {where}")
        for status in self.replicas:
            status.process.wait_healthy(timeout_s)
        if self.deployment.router is not None:
            self.router = self._start_router(self.deployment.router)
            self._wait_router(self.deployment.router, timeout_s=60.0)
        self._thread = threading.Thread(target=self._watch, name="replica-watch", daemon=True)
        self._thread.start()

    def _start_router(self, command: RouterCommand) -> subprocess.Popen[bytes]:
        from cloud.launch import _die_with_parent  # the same parent-death rule as vLLM's

        process = subprocess.Popen(
            command.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._say(f"vllm-router pid {process.pid} on {command.url} ({self.deployment.plan.policy})")
        return process

    def _wait_router(self, command: RouterCommand, *, timeout_s: float) -> None:
        import httpx

        assert self.router is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.router.poll() is not None:
                raise LaunchError(f"vllm-router exited with status {self.router.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{command.url}/health", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.3)
        raise LaunchError(f"vllm-router did not answer within {timeout_s:.0f} s")

    # --- watch and restart ---------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            if self.router is not None and self.router.poll() is not None:
                self._say(f"vllm-router exited with status {self.router.returncode}")
                self.died.set()
                return
            for status in self.replicas:
                code = status.process.poll()
                if code is not None and not self._stopping.is_set():
                    self._restart(status, code)

    def _restart(self, status: ReplicaStatus, code: int) -> None:
        # A replica that keeps dying right after its start waits longer each time.
        quick = time.monotonic() - status.last_start < 120
        pause = min(self.max_backoff_s, 2.0 ** status.restarts) if quick else 1.0
        self._say(f"replica {status.index} exited with status {code}; restarting in {pause:.0f} s")
        status.process.stop(timeout_s=2.0)  # its engine-core and worker processes outlive it
        if self._stopping.wait(pause):
            return
        status.restarts += 1
        status.last_start = time.monotonic()
        status.process = VllmProcess(status.command, log=self._log, secret_env=self._secret_env)
        status.process.start()
        assert status.process.process is not None
        self._say(f"replica {status.index}: restarted, vLLM pid {status.process.process.pid}")
        # Health is the gateway's business from here (its poller warms the replica up and
        # puts it back into the router); the watcher only keeps the process alive.

    # --- stop ----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()
        if self.router is not None and self.router.poll() is None:
            self.router.terminate()
            try:
                self.router.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.router.kill()
                self.router.wait()
        if self.router is not None:
            stop_process_group(self.router.pid, 5.0)
        threads = [
            threading.Thread(target=s.process.stop, daemon=True) for s in self.replicas
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
