"""Replicas, tensor and pipeline parallel without a running server: the commands a profile and
the command line produce (`--dry-run`), the plan's checks, admission across replicas and its
queue, and `tandem cloud keys` options wherever users put them."""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path

import pytest

from cloud.gateway.admission import Admission, AdmissionConfig, Rejection, Ticket
from cloud.gateway.keys import KeyStore
from cloud.gateway.pool import DOWN, ReplicaPool
from cloud.launch import LaunchError, LaunchOptions, load_profile
from cloud.replicas import ReplicaPlan, build_deployment, plan_from_profile, split_cores
from tui.commands.cloud import main as cloud_main


def _commands(
    capsys: pytest.CaptureFixture[str], *args: str
) -> list[tuple[dict[str, str], list[str]]]:
    """Every command --dry-run prints, as (environment, argv)."""
    assert cloud_main(["serve", "--dry-run", "--host", "127.0.0.1", *args]) == 0
    out = []
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("#"):
            continue
        words = shlex.split(line)
        env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
        out.append((env, [w for w in words if not ("=" in w and not w.startswith("-"))]))
    return out


def _value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _profile(tmp_path: Path, base: str, replicas: str) -> str:
    text = (Path(__file__).parent.parent / "cloud" / "profiles" / f"{base}.toml").read_text()
    start = text.index("[replicas]")
    end = text.index("\n[", start + 1)
    path = tmp_path / "p.toml"
    path.write_text(text[:start] + replicas + text[end:])
    return str(path)


def test_two_cpu_replicas_each_get_a_port_and_a_core_behind_the_router(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    profile = _profile(tmp_path, "cpu", '[replicas]\ncount = 2\ncpu-cores = [[0], [1]]\n')
    (env0, r0), (env1, r1), (_, router) = _commands(capsys, "--model", "m", "--profile", profile)
    assert r0[:3] == ["taskset", "-c", "0"] and r1[:3] == ["taskset", "-c", "1"]
    assert env0["VLLM_CPU_OMP_THREADS_BIND"] == "0" and env1["VLLM_CPU_OMP_THREADS_BIND"] == "1"
    # vllm-router needs http:// workers: loopback TCP ports, never another address
    ports = [_value(r0, "--port"), _value(r1, "--port")]
    assert _value(r0, "--host") == _value(r1, "--host") == "127.0.0.1" and len(set(ports)) == 2
    assert "--uds" not in r0 and "--no-enable-log-requests" in r0
    assert router[1:3] == ["-m", "vllm_router.launch_router"]
    assert _value(router, "--host") == "127.0.0.1" and _value(router, "--policy") == "cache_aware"
    assert _value(router, "--prometheus-host") == "127.0.0.1"
    workers = router[router.index("--worker-urls") + 1 : router.index("--policy")]
    assert workers == [f"http://127.0.0.1:{p}" for p in ports]
    # the replicas' API key travels in their environment, never in any argv
    for argv in (r0, r1, router):
        assert not any("api-key" in word or "VLLM_API_KEY" in word for word in argv)


def test_the_replicas_flag_and_the_policy_override_the_profile(
    capsys: pytest.CaptureFixture[str],
) -> None:
    commands = _commands(
        capsys, "--model", "m", "--profile", "h100", "--replicas", "3",
        "--router-policy", "round_robin", "--vllm-port", "9000",
    )  # fmt: skip
    *replicas, (_, router) = commands
    assert [_value(argv, "--port") for _, argv in replicas] == ["9000", "9001", "9002"]
    assert _value(router, "--port") == "8999" and _value(router, "--policy") == "round_robin"


def test_gpu_replicas_see_disjoint_gpus(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    profile = _profile(tmp_path, "h100-tp", "[replicas]\ncount = 2\ngpus-per-replica = 4\n")
    commands = _commands(
        capsys, "--model", "m", "--profile", profile, "--tensor-parallel-size", "4"
    )
    (env0, r0), (env1, _), _ = commands
    assert env0["CUDA_VISIBLE_DEVICES"] == "0,1,2,3" and env1["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    assert _value(r0, "--tensor-parallel-size") == "4"
    assert _value(r0, "--distributed-executor-backend") == "mp"


def test_one_replica_stays_on_its_private_socket_without_a_router(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ((env, argv),) = _commands(capsys, "--model", "m", "--profile", "cpu")
    assert _value(argv, "--uds").endswith("/vllm.sock") and "--port" not in argv
    assert argv[0] != "taskset" and "VLLM_CPU_OMP_THREADS_BIND" not in env


def test_tensor_parallel_within_a_node(capsys: pytest.CaptureFixture[str]) -> None:
    ((env, argv),) = _commands(capsys, "--model", "m", "--profile", "h100-tp")
    assert _value(argv, "--tensor-parallel-size") == "8"
    assert "CUDA_VISIBLE_DEVICES" not in env  # one replica sees every GPU of the node


def test_pipeline_parallel_across_nodes_runs_on_ray_after_the_cluster_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    head, worker, (_, vllm) = _commands(capsys, "--model", "m", "--profile", "h100-pp-ray")
    assert head[1] == ["ray", "start", "--head", "--port=6379"]
    assert worker[1][:2] == ["ray", "start"] and worker[1][2].startswith("--address=")
    assert _value(vllm, "--distributed-executor-backend") == "ray"
    assert _value(vllm, "--pipeline-parallel-size") == "2"
    assert _value(vllm, "--tensor-parallel-size") == "8"
    assert "--speculative-config" not in vllm  # vLLM does not combine it with pipeline stages


def test_dry_run_names_the_gateway_in_front_of_the_router(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cloud_main(["serve", "--dry-run", "--model", "m", "--profile", "cpu",
                       "--replicas", "2", "--host", "127.0.0.1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    gateway = [line for line in out.splitlines() if line.startswith("# gateway:")]
    assert gateway == ["# gateway: http://127.0.0.1:8000 -> http://127.0.0.1:8099"]
    assert "--upstream http://127.0.0.1:8099 --replica http://127.0.0.1:8100" in out


@pytest.mark.parametrize(
    ("replicas", "message"),
    [
        ("[replicas]\ncount = 0\n", "at least 1"),
        ('[replicas]\ncount = 2\npolicy = "fastest"\n', "policy"),
        ("[replicas]\ncount = 3\ncpu-cores = [[0], [1]]\n", "one set per replica"),
        ('[replicas]\ncount = 2\nrouter-args = ["--host", "0.0.0.0"]\n', "--host"),
        ('[replicas]\ncount = 2\nrouter-args = ["--worker-urls=http://evil:1"]\n', "worker-urls"),
        ('[replicas]\ncount = 2\ncpu-cores = "all"\n', "cpu-cores"),
    ],
)
def test_a_bad_replicas_section_fails_before_anything_starts(
    tmp_path: Path, replicas: str, message: str
) -> None:
    with pytest.raises(LaunchError, match=message):
        plan_from_profile(load_profile(_profile(tmp_path, "cpu", replicas)))


def test_auto_cores_split_evenly_and_refuse_more_replicas_than_cores() -> None:
    assert split_cores(2, [0, 1, 2, 3]) == ((0, 1), (2, 3))
    with pytest.raises(LaunchError, match="only 2 cores"):
        split_cores(3, [0, 1])


def test_tensor_parallel_wider_than_a_replicas_gpus_is_refused() -> None:
    plan = ReplicaPlan(count=2, gpus_per_replica=2)
    options = LaunchOptions(model="m", tensor_parallel_size=4)
    with pytest.raises(LaunchError, match="4 GPUs per replica"):
        build_deployment(options, load_profile("h100"), plan)


def test_keys_options_work_after_the_action(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    assert cloud_main(["keys", "add", "alice", "--keys-file", str(keys_file)]) == 0
    assert cloud_main(["keys", "--keys-file", str(keys_file), "add", "bob", "--admin"]) == 0
    assert [r.name for r in KeyStore(keys_file).records()] == ["alice", "bob"]
    assert cloud_main(["keys", "revoke", "alice", "--keys-file", str(keys_file),
                       "--adapters-dir", str(tmp_path / "a")]) == 0  # fmt: skip
    assert [r.name for r in KeyStore(keys_file).records()] == ["bob"]


# --- admission across replicas, and its queue -------------------------------------------------


def _two_replicas(config: AdmissionConfig) -> Admission:
    pool = ReplicaPool(("http://127.0.0.1:1", "http://127.0.0.1:2"))
    admission = Admission(config, pool=pool)
    for replica in pool.replicas:  # as if just read from /metrics
        replica.load.read_at = 1e18
    return admission


def test_admission_refuses_only_when_every_replica_is_saturated() -> None:
    admission = _two_replicas(AdmissionConfig(max_waiting=2, per_key_concurrency=99))
    first, second = admission.pool.replicas
    first.load.waiting = 5
    assert isinstance(admission.admit("a"), Ticket)  # the second one has room
    second.load.kv_cache_usage = 0.99
    refused = admission.admit("a")
    assert isinstance(refused, Rejection) and refused.reason == "saturated"
    second.state = DOWN  # a replica out of rotation does not count as room
    second.load.kv_cache_usage = 0.0
    assert isinstance(admission.admit("a"), Rejection)


def test_max_in_flight_counts_per_replica_in_rotation() -> None:
    admission = _two_replicas(AdmissionConfig(max_in_flight=2, per_key_concurrency=99))
    assert [isinstance(admission.admit("a"), Ticket) for _ in range(5)] == [True] * 4 + [False]


async def test_a_queued_request_gets_the_slot_released_while_it_waits() -> None:
    admission = Admission(AdmissionConfig(per_key_concurrency=1, max_queue_wait_s=5.0))
    held = admission.admit("a")
    assert isinstance(held, Ticket)
    waiting = asyncio.create_task(admission.admit_waiting("a", 5.0))
    await asyncio.sleep(0.05)
    assert admission.queued == 1 and not waiting.done()
    held.release()
    assert isinstance(await waiting, Ticket) and admission.queued == 0


async def test_the_queue_is_bounded_in_time_and_length() -> None:
    admission = Admission(AdmissionConfig(per_key_concurrency=1, max_queued=1))
    assert isinstance(admission.admit("a"), Ticket)
    first = asyncio.create_task(admission.admit_waiting("a", 0.2))
    await asyncio.sleep(0.02)
    second = await admission.admit_waiting("a", 5.0)  # the queue is full: at once
    assert isinstance(second, Rejection) and second.reason == "key concurrency"
    assert isinstance(await first, Rejection) and admission.queued == 0


def test_the_kubernetes_gateway_manifest_is_a_command_tandem_accepts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """cloud/deploy/tandem-gateway.yaml runs `tandem cloud serve` with arguments this version
    takes (checked with --dry-run); the Helm values parse and keep prompts out of vLLM's log."""
    import yaml

    deploy = Path(__file__).parent.parent / "cloud" / "deploy"
    documents = list(yaml.safe_load_all((deploy / "tandem-gateway.yaml").read_text()))
    (container,) = documents[0]["spec"]["template"]["spec"]["containers"]
    assert container["args"][:3] == ["tandem", "cloud", "serve"]
    assert cloud_main([*container["args"][2:], "--dry-run"]) == 0
    assert "--upstream http" not in capsys.readouterr().err
    assert not any("KEY" in arg.upper() and "=" in arg for arg in container["args"])
    values = yaml.safe_load((deploy / "production-stack-values.yaml").read_text())
    (model,) = values["servingEngineSpec"]["modelSpec"]
    assert "--no-enable-log-requests" in model["vllmConfig"]["extraArgs"]
