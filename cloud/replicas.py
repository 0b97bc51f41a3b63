"""Several vLLM replicas behind vllm-router: the plan and the exact commands (pure, no I/O).

A profile's `[replicas]` section (or `--replicas N`) says how many vLLM servers to run and
what each one gets: on GPU machines a slice of the GPUs (`CUDA_VISIBLE_DEVICES`), on the CPU
the cores it is pinned to (`taskset -c` for the process, `VLLM_CPU_OMP_THREADS_BIND` for
vLLM's OpenMP threads). `build_deployment` turns that into every command of the deployment:
the replicas, vllm-router in front of them, and (printed by `--dry-run`) the gateway.

Why TCP on loopback: vllm-router only speaks to `http://host:port` workers, so with more than
one replica each vLLM listens on a 127.0.0.1 port (with one, tandem keeps vLLM on its private
Unix socket). vLLM's `--api-key` (given through `VLLM_API_KEY`, never argv) guards `/v1/...`
there; its `/metrics`, `/health`, `/tokenize`, `/detokenize`, `/pooling`, `/invocations` and
`/version` do not check it, and vllm-router's own `/add_worker`, `/remove_worker`,
`/list_workers` check nothing. README.md says what that means for the machine.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from typing import Any

from cloud.launch import LOOPBACK, LaunchError, LaunchOptions, Profile, VllmCommand
from cloud.launch import build_vllm_command as _build_one

__all__ = [
    "ROUTER_POLICIES",
    "Deployment",
    "ReplicaPlan",
    "RouterCommand",
    "build_deployment",
    "plan_from_profile",
]

ROUTER_POLICIES = ("cache_aware", "round_robin", "power_of_two", "consistent_hash", "random")
# Flags tandem sets on vllm-router itself (a profile's [replicas] router-args may not move it
# off loopback or point it at other workers).
ROUTER_RESERVED = (
    "host", "port", "worker-urls", "policy", "api-key", "service-discovery", "prometheus-host",
    "prometheus-port",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ReplicaPlan:
    """How many replicas and what each one runs on (the profile's `[replicas]`)."""

    count: int = 1
    gpus_per_replica: int = 0
    """GPUs per replica: replica i gets CUDA_VISIBLE_DEVICES i*g .. i*g+g-1; 0 leaves it unset."""
    cpu_cores: tuple[tuple[int, ...], ...] = ()
    """The cores each replica is pinned to (CPU profiles); empty: not pinned."""
    policy: str = "cache_aware"
    """vllm-router's load-balancing policy."""
    base_port: int = 8100
    """Replica i listens on 127.0.0.1:base_port+i; the router on base_port-1, its metrics on
    base_port-2."""
    router_args: tuple[str, ...] = ()
    """Extra vllm-router flags (retries, circuit breaker, ...)."""

    def __post_init__(self) -> None:
        if self.count < 1:
            raise LaunchError("[replicas] count must be at least 1")
        if self.gpus_per_replica < 0:
            raise LaunchError("[replicas] gpus-per-replica must be 0 or more")
        if self.policy not in ROUTER_POLICIES:
            raise LaunchError(
                f"[replicas] policy {self.policy!r}: one of {', '.join(ROUTER_POLICIES)}"
            )
        if self.cpu_cores and len(self.cpu_cores) < self.count:
            raise LaunchError(
                f"[replicas] cpu-cores lists {len(self.cpu_cores)} core sets for "
                f"{self.count} replicas: give one set per replica (or \"auto\")"
            )
        if any(not cores for cores in self.cpu_cores):
            raise LaunchError("[replicas] cpu-cores: every replica needs at least one core")
        for arg in self.router_args:
            name = arg.lstrip("-").split("=", 1)[0].replace("_", "-").lower()
            if arg.startswith("-") and any(r.startswith(name) for r in ROUTER_RESERVED if name):
                raise LaunchError(f"[replicas] router-args: tandem sets --{name} itself")

    @property
    def router_port(self) -> int:
        return self.base_port - 1

    @property
    def router_metrics_port(self) -> int:
        """vllm-router's own Prometheus exporter."""
        return self.base_port - 2

    def replica_port(self, index: int) -> int:
        return self.base_port + index


def split_cores(count: int, available: list[int]) -> tuple[tuple[int, ...], ...]:
    """`count` disjoint, equal core sets out of `available` ("auto" in the profile)."""
    if count > len(available):
        raise LaunchError(
            f"[replicas] cpu-cores = \"auto\": {count} replicas but only {len(available)} "
            "cores to pin them to"
        )
    each = len(available) // count
    return tuple(tuple(available[i * each : (i + 1) * each]) for i in range(count))


def plan_from_profile(
    profile: Profile,
    *,
    replicas: int | None = None,
    policy: str | None = None,
    base_port: int | None = None,
    available_cores: list[int] | None = None,
) -> ReplicaPlan:
    """The profile's `[replicas]` with the command line's choices on top."""
    section: dict[str, Any] = dict(profile.replicas)
    count = replicas if replicas is not None else int(section.get("count", 1))
    raw_cores = section.get("cpu-cores", [])
    cores: tuple[tuple[int, ...], ...]
    if raw_cores == "auto":
        # One replica is left unpinned (vLLM binds its threads itself, as without [replicas]).
        pool = available_cores if available_cores is not None else sorted(_affinity())
        cores = split_cores(count, pool) if count > 1 else ()
    elif isinstance(raw_cores, list):
        try:
            cores = tuple(
                tuple(int(c) for c in (s if isinstance(s, list) else [s])) for s in raw_cores
            )
        except (TypeError, ValueError):
            raise LaunchError(
                "[replicas] cpu-cores: a list of core lists, e.g. [[0], [1]]"
            ) from None
        cores = cores[:count]
    else:
        raise LaunchError('[replicas] cpu-cores: "auto" or a list of core lists, e.g. [[0], [1]]')
    extra = section.get("router-args", [])
    if not isinstance(extra, list):
        raise LaunchError("[replicas] router-args: a list of strings")
    return ReplicaPlan(
        count=count,
        gpus_per_replica=int(section.get("gpus-per-replica", 0)),
        cpu_cores=cores,
        policy=policy or str(section.get("policy", "cache_aware")),
        base_port=base_port or int(section.get("base-port", 8100)),
        router_args=tuple(str(a) for a in extra),
    )


def _affinity() -> set[int]:
    getter = getattr(os, "sched_getaffinity", None)
    return set(getter(0)) if getter else set(range(os.cpu_count() or 1))


@dataclass(frozen=True, slots=True)
class RouterCommand:
    """vllm-router on loopback in front of the replicas."""

    argv: list[str]
    port: int
    worker_urls: tuple[str, ...]

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def render(self) -> str:
        import shlex

        return shlex.join(self.argv)


@dataclass(frozen=True, slots=True)
class Deployment:
    """Every process of a replicated deployment, in start order."""

    replicas: tuple[VllmCommand, ...]
    router: RouterCommand | None
    """None with a single replica (the gateway talks to it directly)."""
    plan: ReplicaPlan = field(default_factory=ReplicaPlan)

    @property
    def upstream_url(self) -> str:
        """Where the gateway sends requests: the router, or the one replica."""
        return self.router.url if self.router else self.replicas[0].url

    @property
    def replica_urls(self) -> tuple[str, ...]:
        return tuple(r.url for r in self.replicas)


def build_router_command(
    worker_urls: tuple[str, ...], plan: ReplicaPlan, *, python: str = sys.executable
) -> RouterCommand:
    """vllm-router's argv. No API key on it: the router passes the gateway's Authorization
    header on to the replicas, so the secret stays out of every argv."""
    argv = [python, "-m", "vllm_router.launch_router"]
    argv += ["--host", LOOPBACK, "--port", str(plan.router_port)]
    argv += ["--worker-urls", *worker_urls, "--policy", plan.policy]
    # It always serves Prometheus metrics, by default on a fixed port of every address:
    # loopback, on a port of its own, next to the router's.
    argv += ["--prometheus-host", LOOPBACK, "--prometheus-port", str(plan.router_metrics_port)]
    # A dead replica must leave the rotation within seconds, not the default minute; and a
    # request that could not reach one is retried on another before the client sees anything.
    argv += ["--health-check-interval-secs", "2", "--health-failure-threshold", "1"]
    argv += ["--health-success-threshold", "1", "--retry-max-retries", "3"]
    argv += ["--log-level", "warning"]  # its info lines are per request (no text, but noise)
    argv += list(plan.router_args)
    return RouterCommand(argv, plan.router_port, worker_urls)


def build_deployment(
    options: LaunchOptions, profile: Profile, plan: ReplicaPlan, *, python: str = sys.executable
) -> Deployment:
    """The replicas' and the router's commands. One replica: exactly the single-server
    command (on its Unix socket when `options.uds` is set), pinned if the plan says so."""
    if plan.count == 1:
        only = _place(_build_one(options, profile, python=python), plan, 0)
        return Deployment((only,), None, plan)
    tensor = options.tensor_parallel_size or int(profile.vllm.get("tensor-parallel-size", 1))
    if plan.gpus_per_replica and tensor > plan.gpus_per_replica:
        raise LaunchError(
            f"tensor-parallel-size {tensor} needs {tensor} GPUs per replica; [replicas] "
            f"gpus-per-replica is {plan.gpus_per_replica}"
        )
    commands = []
    for index in range(plan.count):
        one = replace(options, uds=None, port=plan.replica_port(index))
        commands.append(_place(_build_one(one, profile, python=python), plan, index))
    urls = tuple(c.url for c in commands)
    return Deployment(tuple(commands), build_router_command(urls, plan, python=python), plan)


def _place(command: VllmCommand, plan: ReplicaPlan, index: int) -> VllmCommand:
    """Give replica `index` its GPUs or its cores."""
    env = dict(command.env)
    argv = list(command.argv)
    if plan.gpus_per_replica and plan.count > 1:  # one replica sees every GPU, as before
        first = index * plan.gpus_per_replica
        env["CUDA_VISIBLE_DEVICES"] = ",".join(
            str(g) for g in range(first, first + plan.gpus_per_replica)
        )
    if plan.cpu_cores:
        cores = plan.cpu_cores[index]
        listed = ",".join(str(c) for c in cores)
        # taskset pins the API server and everything it spawns; the bind variable tells
        # vLLM's CPU worker which cores its OpenMP threads own (one thread per core).
        env["VLLM_CPU_OMP_THREADS_BIND"] = listed
        argv = ["taskset", "-c", listed, *argv]
    return replace(command, argv=argv, env=env)
