"""``--engine ray`` on real multi-node Ray clusters started by these tests: ``ray.cluster_utils``
(a head and worker nodes, each its own raylet) and, once, real ``ray start`` processes. Nodes are
stopped by the PIDs the tests started (never ``ray stop``, which kills every Ray process on the
host). Every result is compared with the local engine's: same shard names and sha256, same
rejects, indexes and Energon metadata, manifests equal but for timings and the engine."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ray  # a test dependency (pip install .[test]): these tests never skip

from conftest import run_cli
from fastwds.synthetic import generate
from npz_data import make_dataset
from s3_server import S3Server
from sft_data import make_image_dataset

TIMEOUT = 240
# Driver and nodes alike: short socket paths (a custom temp_dir crashes Ray 2.60), no token auth
# (a token file made by another Ray run would make the nodes disagree), no usage reporting.
RAY_ENV = {"RAY_TMPDIR": f"/tmp/fwr{os.getpid()}", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
# Nodes declared dead 1.5 s after their raylet goes, not 15 s, so retries start quickly.
FAST_HEALTH = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}


@pytest.fixture(scope="module")
def s3_server():
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture(scope="module", autouse=True)
def ray_environment(s3_server, tmp_path_factory):
    """Set before the cluster starts, so its nodes (and their workers) reach the S3 server too."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**RAY_ENV, **s3_server.environment()}.items():
            patch.setenv(name, value)
        patch.setenv("FASTWDS_SCRATCH", str(tmp_path_factory.mktemp("scratch")))
        yield


@pytest.fixture(scope="module")
def cluster(ray_environment):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": FAST_HEALTH})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()  # stops exactly the processes it started


@pytest.fixture(scope="module")
def parquet_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-parquet")
    generate(root, rows=600, subsets=2, files_per_subset=2, row_group_rows=50, seed=8)
    return root


PARQUET = ["--max-samples-per-shard", "40", "--no-progress"]


def convert(kind: str, data: list[str], out: Path, *extra: str, check: bool = True):
    return run_cli("convert", kind, *data, str(out), *extra, check=check)


def outputs(out: Path) -> dict[str, str]:
    """sha256 of every dataset file (everything but the run state and the manifest)."""
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.relative_to(out).as_posix().startswith(".fastwds/") and p.name != "manifest.json"}


def comparable_manifest(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    for volatile in ("elapsed_seconds", "engine"):
        manifest.pop(volatile)
    return manifest


def assert_same_as_local(ray_out: Path, local_out: Path) -> None:
    assert outputs(ray_out) == outputs(local_out)
    assert comparable_manifest(ray_out) == comparable_manifest(local_out)
    assert json.loads((ray_out / "manifest.json").read_text())["engine"] == "ray"
    verified = run_cli("verify", str(ray_out), "--json")
    assert json.loads(verified.stdout)["errors"] == 0


@pytest.fixture(scope="module")
def local_parquet(parquet_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    convert("parquet", [str(parquet_data)], out, *PARQUET)
    return out


def sft_case(tmp_path: Path) -> tuple[str, list[str], list[str]]:
    dataset = make_image_dataset(tmp_path / "sft")
    return "sft", [str(dataset.root / "data.json"), str(dataset.root / "nested" / "more.jsonl")], \
        ["--max-samples-per-shard", "3", "--split-ratio", "8,1,1", "--no-progress"]


def npz_case(tmp_path: Path) -> tuple[str, list[str], list[str]]:
    data = make_dataset(tmp_path / "npz")
    return "npz", [str(data.root)], ["--reports", str(data.reports), "--meta", str(data.meta), "--labels",
                                     str(data.labels), "--samples-per-shard", "2", "--no-progress"]


def parquet_case(tmp_path: Path) -> tuple[str, list[str], list[str]]:
    root = tmp_path / "pq"
    generate(root, rows=200, subsets=2, files_per_subset=1, row_group_rows=30, seed=2)
    return "parquet", [str(root)], ["--max-samples-per-shard", "25", "--dali-index", "--no-progress"]


@pytest.mark.parametrize("case", [parquet_case, sft_case, npz_case], ids=["parquet", "sft", "npz"])
def test_ray_writes_what_the_local_engine_writes(cluster, tmp_path, case):
    kind, data, extra = case(tmp_path)
    # The same folder name: the wids index is named after it.
    convert(kind, data, tmp_path / "local" / "out", *extra)
    convert(kind, data, tmp_path / "ray" / "out", *extra, "--engine", "ray", "--ray-address", cluster.address)
    assert_same_as_local(tmp_path / "ray" / "out", tmp_path / "local" / "out")


def descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, stack = [], [pid]
    while stack:
        for child in parents.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def attempts_on(out: Path, pids: set[int]) -> list[dict]:
    found = []
    for owner in (out / ".fastwds" / "attempts").glob("*/.owner.json"):
        try:
            info = json.loads(owner.read_text())
        except (OSError, ValueError):
            continue
        if info["pid"] in pids:
            found.append(info)
    return found


def wait_for(condition, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def unfinished(out: Path, attempts: list[dict]) -> list[dict]:
    return [a for a in attempts if not (out / ".fastwds" / "tasks" / f"{a['task']}.json").exists()]


def freeze_a_running_attempt(out: Path, raylet_pid: int) -> list[dict]:
    """SIGSTOP the node's processes while one of its attempts has not written its task record.
    Seen running is not enough: a short task can finish between the look and the kill (a CI run
    saw that), and a finished task is never retried. Checked again once stopped, when nothing on
    the node can finish any more; if it finished in between, let the node go on and look again."""
    while True:
        wait_for(lambda: unfinished(out, attempts_on(out, set(descendants(raylet_pid)))), "a task on the doomed node")
        frozen = [raylet_pid, *descendants(raylet_pid)]
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        if victims := unfinished(out, attempts_on(out, set(frozen))):
            return victims
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)


def test_a_node_that_dies_mid_task_loses_nothing(cluster, parquet_data, local_parquet, tmp_path):
    """SIGKILL of a worker node (its raylet and the workers under it) while a task runs there:
    Ray retries the task on the node left, and the output is the local engine's."""
    from ray._private import ray_constants

    node = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
    out = tmp_path / "out"
    driver = subprocess.Popen([sys.executable, "-m", "fastwds", "convert", "parquet", str(parquet_data), str(out),
                               *PARQUET, "--engine", "ray", "--ray-address", cluster.address, "--ray-task-cpus", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victims = freeze_a_running_attempt(out, raylet.pid)
        for pid in [raylet.pid, *descendants(raylet.pid)]:
            os.kill(pid, signal.SIGKILL)
        raylet.wait()  # reap it: a zombie raylet keeps the node looking alive
        cluster.remove_node(node, allow_graceful=False)
        _, stderr = driver.communicate(timeout=TIMEOUT)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 0, stderr
    assert (out / ".fastwds" / "tasks" / f"{victims[0]['task']}.json").exists()
    attempts = [json.loads(line) for line in (out / ".fastwds" / "attempts.jsonl").read_text().splitlines()]
    assert sum(a["task"] == victims[0]["task"] for a in attempts) >= 2, "the killed task was not retried"
    assert_same_as_local(out, local_parquet)


def test_a_node_listed_when_the_job_starts_but_gone_is_left_out(cluster, parquet_data, tmp_path, caplog):
    """The race behind a hung CI run, forced: the driver lists the nodes, then one dies before the
    probes reach it (Ray may list it as alive for a moment, or already know). The node is left
    out with a line naming it, the others serve, and nothing waits for the probe timeout."""
    import logging

    from ray._private import ray_constants

    from fastwds.convert.engines.ray import PROBE_SECONDS, RayEngine
    from fastwds.convert.execute import TaskJob
    from fastwds.sources import get_source
    from fastwds.sources.parquet import ParquetColumns

    node = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    source = get_source("parquet")
    options = source.convert_options(source_options=ParquetColumns())
    plan = source.plan(str(parquet_data), options)
    out = tmp_path / "out"
    out.mkdir()
    job = TaskJob("parquet", plan.tasks[0], plan.input_root, options, str(out), "s")
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        listed = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
        assert node.node_id in {n["NodeID"] for n in listed}
        raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
        for pid in [raylet.pid, *descendants(raylet.pid)]:
            os.kill(pid, signal.SIGKILL)
        raylet.wait()
        cluster.remove_node(node, allow_graceful=False)
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="fastwds"):
            serving = RayEngine().check_nodes(ray, listed, job)
        took = time.monotonic() - started
    finally:
        ray.shutdown()
    assert {n["NodeID"] for n in serving} == {n["NodeID"] for n in listed} - {node.node_id}
    assert f"node {node.node_id[:12]}" in caplog.text and "left the cluster" in caplog.text
    assert took < PROBE_SECONDS / 2, f"check_nodes took {took:.1f} s: it waited for the dead node's probe"


def test_a_killed_driver_resumes_on_the_local_engine(cluster, parquet_data, local_parquet, tmp_path):
    out = tmp_path / "out"
    log = tmp_path / "driver.log"
    with open(log, "w") as stderr:
        driver = subprocess.Popen([sys.executable, "-m", "fastwds", "--log-level", "DEBUG", "convert", "parquet",
                                   str(parquet_data), str(out), *PARQUET, "--engine", "ray", "--ray-address",
                                   cluster.address], stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for(lambda: driver.poll() is not None or (len(list((out / ".fastwds" / "tasks").glob("*.json"))) >= 2
                                                       if (out / ".fastwds").exists() else False),
                 "two finished tasks")
        assert driver.poll() is None, f"the driver ended first ({driver.returncode}):\n{log.read_text()[-3000:]}"
    except AssertionError as error:
        raise AssertionError(f"{error}\ndriver's log:\n{log.read_text()[-3000:]}") from None
    finally:
        driver.kill()  # Ray stops the dead driver's tasks
        driver.wait()
    assert not (out / "manifest.json").exists()
    resumed = json.loads(convert("parquet", [str(parquet_data)], out, *PARQUET, "--resume", "--json").stdout)
    assert resumed["resumed"]
    assert outputs(out) == outputs(local_parquet)


def test_a_wrong_ray_address_fails_in_seconds_and_leaves_the_output_as_it_was(parquet_data, tmp_path):
    """Nothing listening there: ray.init would retry forever, printing only Ray's GCS warnings."""
    with socket.socket() as placeholder:  # a port nothing listens on
        placeholder.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{placeholder.getsockname()[1]}"
    out = tmp_path / "out"
    started = time.monotonic()
    result = convert("parquet", [str(parquet_data)], out, *PARQUET, "--engine", "ray", "--ray-address", address,
                     check=False)
    assert time.monotonic() - started < 60
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"--ray-address {address}: no Ray cluster answers there" in result.stderr, result.stderr
    assert not out.exists(), "a run that never started leaves its state (or its folder) behind"


def test_sigterm_stops_a_ray_run_like_ctrl_c(cluster, parquet_data, local_parquet, tmp_path):
    """ray.init installs its own SIGTERM handler in the driver (a stack dump, exit 15): fastwds'
    must win, as with the local engine: exit 143, the resume command, and a resume that completes."""
    out = tmp_path / "out"
    args = ["convert", "parquet", str(parquet_data), str(out), *PARQUET, "--engine", "ray", "--ray-address",
            cluster.address]
    with subprocess.Popen([sys.executable, "-m", "fastwds", *args], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as driver:
        wait_for(lambda: driver.poll() is not None or bool(list((out / ".fastwds" / "tasks").glob("*.json"))),
                 "a finished task")
        assert driver.poll() is None, "the run ended before it could be stopped"
        driver.send_signal(signal.SIGTERM)
        _, stderr = driver.communicate(timeout=TIMEOUT)
    assert driver.returncode == 143, stderr
    assert "SIGTERM received" not in stderr and "Traceback" not in stderr, stderr
    assert "to continue:" in stderr and "--resume" in stderr, stderr
    convert("parquet", [str(parquet_data)], out, *PARQUET, "--resume")
    assert outputs(out) == outputs(local_parquet)


def test_a_node_that_sees_other_input_files_is_refused_naming_the_file(cluster, parquet_data, tmp_path):
    """Nodes that each hold a copy of the input at the same path must hold the copy the driver
    planned (a different one gave other shards, silently). Here the file changes after planning:
    every node, the driver's own included, sees it differ from the plan."""
    from fastwds.convert.run import convert as run_conversion
    from fastwds.errors import InvalidInputError
    from fastwds.sources import get_source

    data = tmp_path / "data"
    generate(data, rows=60, subsets=1, files_per_subset=2, row_group_rows=30, seed=9)
    source = get_source("parquet")
    options = source.convert_options(max_samples_per_shard=40)
    plan = source.plan(str(data), options)
    changed = sorted(data.rglob("*.parquet"))[1]
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(InvalidInputError) as refused:
        run_conversion(plan, tmp_path / "out", options, command="test", show_progress=False, engine="ray",
                       engine_settings={"address": cluster.address})
    assert str(changed) in str(refused.value) and "not the one the driver planned" in str(refused.value)
    assert not list((tmp_path / "out").glob("*.tar"))


def test_a_data_error_fails_the_job_once_naming_task_and_file(cluster, tmp_path):
    import pyarrow.parquet as pq

    root = tmp_path / "data"
    generate(root, rows=120, subsets=1, files_per_subset=2, row_group_rows=30, seed=4)
    damaged = sorted(root.rglob("*.parquet"))[1]
    metadata = pq.read_metadata(damaged)
    images = metadata.schema.to_arrow_schema().get_field_index("image")
    chunk = metadata.row_group(1).column(images)  # the image bytes of the second row group
    data = bytearray(damaged.read_bytes())
    start = chunk.data_page_offset + 16
    data[start:start + 4096] = os.urandom(4096)
    damaged.write_bytes(bytes(data))
    out = tmp_path / "out"
    result = convert("parquet", [str(root)], out, "--max-samples-per-shard", "30", "--no-progress", "--engine", "ray",
                     "--ray-address", cluster.address, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    failed = [line for line in result.stderr.splitlines() if "error:" in line]
    assert failed and str(damaged) in failed[0] and "cannot be read" in failed[0]
    task = failed[0].split("task ", 1)[1].split(":", 1)[0]
    attempts = [json.loads(line) for line in (out / ".fastwds" / "attempts.jsonl").read_text().splitlines()]
    assert [a["task"] for a in attempts].count(task) == 1, "a data error must not be retried"


@pytest.mark.parametrize("apart", [0.5, 1.5, 3.0])
def test_overlapping_ray_attempts_of_one_task_give_the_right_shards(cluster, parquet_data, tmp_path, apart):
    """Two Ray attempts of the same task submitted ``apart`` seconds after each other (a retry
    while the first runs, a straggler's duplicate), on a task that spills into several shards."""
    from dataclasses import replace

    from fastwds.convert.engines.ray import ProgressBoard, run_attempt
    from fastwds.convert.execute import TaskJob, execute_task
    from fastwds.convert.output import open_output
    from fastwds.convert.state import prepare_output
    from fastwds.sources import get_source
    from fastwds.sources.parquet import ParquetColumns

    source = get_source("parquet")
    plan_options = source.convert_options(source_options=ParquetColumns(), max_samples_per_shard=300)
    plan = source.plan(str(parquet_data), plan_options)
    options = replace(plan_options, max_shard_bytes=6_000_000)  # the task spills over: several shards
    outs = {name: tmp_path / name for name in ("clean", "overlap")}
    jobs = {}
    for name, out in outs.items():
        out.mkdir()
        prepare_output(open_output(out), plan, plan_options, resume=False, overwrite=False, session="s")
        jobs[name] = TaskJob("parquet", plan.tasks[0], plan.input_root, options, str(out), "s")
    execute_task(jobs["clean"], lambda *totals: None)
    clean = {p.name: p.read_bytes() for p in outs["clean"].glob("*.tar")}
    assert len(clean) >= 3
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        board = ray.remote(num_cpus=0)(ProgressBoard).remote()
        attempt = ray.remote(run_attempt).options(num_cpus=1, max_retries=0)
        first = attempt.remote(jobs["overlap"], board)
        time.sleep(apart)
        second = attempt.remote(jobs["overlap"], board)
        ray.get([first, second], timeout=TIMEOUT)
    finally:
        ray.shutdown()
    assert {p.name: p.read_bytes() for p in outs["overlap"].glob("*.tar")} == clean
    assert [p.name for p in (outs["overlap"] / ".fastwds" / "tasks").glob("*")] == [f"{plan.tasks[0].name}.json"]
    assert not list((outs["overlap"] / ".fastwds" / "attempts").glob("*"))


def test_a_straggler_gets_a_duplicate_and_the_first_to_finish_wins(cluster, parquet_data, local_parquet, tmp_path):
    out = tmp_path / "out"
    driver = subprocess.Popen([sys.executable, "-m", "fastwds", "convert", "parquet", str(parquet_data), str(out),
                               *PARQUET, "--engine", "ray", "--ray-address", cluster.address, "--ray-task-cpus", "1",
                               "--ray-straggler-factor", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    frozen = None
    try:
        # Freeze an attempt once a few tasks have finished: it now runs "forever".
        wait_for(lambda: len(list((out / ".fastwds" / "tasks").glob("*.json"))) >= 4 if (out / ".fastwds").exists()
                 else False, "four finished tasks")
        frozen = wait_for(lambda: [a for a in attempts_on(out, {int(p.name) for p in Path("/proc").glob("[0-9]*")})
                                   if not (out / ".fastwds" / "tasks" / f"{a['task']}.json").exists()], "a running task")[0]
        os.kill(frozen["pid"], signal.SIGSTOP)
        _, stderr = driver.communicate(timeout=TIMEOUT)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
        if frozen is not None:
            try:
                os.kill(frozen["pid"], signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert driver.returncode == 0, stderr
    assert f"task {frozen['task']} has run" in stderr and "starting a duplicate attempt" in stderr
    assert_same_as_local(out, local_parquet)


def test_a_node_that_cannot_run_fastwds_is_refused_by_name(cluster, parquet_data, tmp_path):
    """A node whose Python finds no fastwds (here its PYTHONPATH shadows the package, as a node
    without it installed): nothing is submitted, and the message names the node."""
    shadow = tmp_path / "shadow" / "fastwds"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('fastwds is not installed on this node')\n")
    node = cluster.add_node(num_cpus=1, env_vars={"PYTHONPATH": str(shadow.parent)})
    cluster.wait_for_nodes()
    try:
        out = tmp_path / "out"
        result = convert("parquet", [str(parquet_data)], out, *PARQUET, "--engine", "ray", "--ray-address",
                         cluster.address, check=False)
    finally:
        cluster.remove_node(node, allow_graceful=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"node {node.node_id[:12]}" in result.stderr and "cannot run fastwds there" in result.stderr
    assert not list((out / ".fastwds" / "tasks").glob("*.json"))


def free_port_block(count: int) -> int:
    """The first of `count` consecutive free ports below the kernel's ephemeral range (32768+), so
    no port handed out to another socket meanwhile falls inside a node's worker-port range."""
    import random

    for _ in range(200):
        base = random.randrange(20000, 32000 - count)
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError(f"no {count} consecutive free ports")


def started(log: Path, process: subprocess.Popen):
    """True once `ray start` says so; an AssertionError with its log if it exited instead."""
    text = log.read_text()
    if "Ray runtime started" in text:
        return True
    if process.poll() is not None:
        raise AssertionError(f"`ray start` exited with {process.returncode}:\n{text[-3000:]}")
    return False


def test_real_ray_start_processes(tmp_path, local_parquet, parquet_data, monkeypatch):
    """A head and a worker started as `ray start --block` processes with explicit ports, the way a
    cluster is started by hand; stopped by SIGTERM to exactly those processes."""
    ray_bin = Path(sys.executable).with_name("ray")
    base = free_port_block(100)
    gcs, dashboard = base, base + 1

    def node_ports(first: int) -> list[str]:
        return [f"--node-manager-port={first}", f"--object-manager-port={first + 1}",
                f"--dashboard-agent-listen-port={first + 2}", f"--dashboard-agent-grpc-port={first + 3}",
                f"--runtime-env-agent-port={first + 4}", f"--metrics-export-port={first + 5}",
                f"--min-worker-port={first + 10}", f"--max-worker-port={first + 40}"]

    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    # Their own temp folder (the driver's too): the module's other cluster's session is not theirs.
    monkeypatch.setenv("RAY_TMPDIR", f"/tmp/fws{os.getpid()}")
    logs = {name: tmp_path / f"{name}.log" for name in ("head", "worker")}
    handles = [open(logs["head"], "w"), open(logs["worker"], "w")]
    head = subprocess.Popen([str(ray_bin), "start", "--head", f"--port={gcs}", "--include-dashboard=false",
                             f"--dashboard-port={dashboard}", *common, *node_ports(base + 2)],
                            stdout=handles[0], stderr=subprocess.STDOUT, start_new_session=True)
    processes = [head]
    try:
        wait_for(lambda: started(logs["head"], head), "the head", timeout=180)
        worker = subprocess.Popen([str(ray_bin), "start", f"--address=127.0.0.1:{gcs}", *common,
                                   *node_ports(base + 50)],
                                  stdout=handles[1], stderr=subprocess.STDOUT, start_new_session=True)
        processes.insert(0, worker)
        wait_for(lambda: started(logs["worker"], worker), "the worker", timeout=180)
        out = tmp_path / "out"
        convert("parquet", [str(parquet_data)], out, *PARQUET, "--engine", "ray", "--ray-address", f"127.0.0.1:{gcs}")
        assert_same_as_local(out, local_parquet)
    finally:
        for process in processes:  # worker first, then the head: each tears down its own node
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(process.pid, signal.SIGKILL)  # anything of that node left in its session
            except ProcessLookupError:
                pass
            process.wait()
        for handle in handles:
            handle.close()


def test_a_cluster_converts_from_a_bucket_to_a_bucket(cluster, parquet_data, local_parquet):
    """Nodes that share no disk: the input and the output are in a bucket, each node stages its
    own shards locally and uploads them; the bytes are the local engine's."""
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="ray-bucket")
    for path in sorted(parquet_data.rglob("*.parquet")):
        s3.put_object(Bucket="ray-bucket", Key=f"in/{path.relative_to(parquet_data).as_posix()}", Body=path.read_bytes())
    run_cli("convert", "parquet", "s3://ray-bucket/in", "s3://ray-bucket/out", *PARQUET, "--engine", "ray",
            "--ray-address", cluster.address)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="ray-bucket", Prefix="out/")
    remote = {entry["Key"][4:]: hashlib.sha256(s3.get_object(Bucket="ray-bucket", Key=entry["Key"])["Body"].read())
              .hexdigest() for page in pages for entry in page.get("Contents", [])}
    shards = {name: digest for name, digest in outputs(local_parquet).items() if name.endswith(".tar")}
    assert {name: digest for name, digest in remote.items() if name.endswith(".tar")} == shards
    attempts = [key for key in remote if key.startswith(".fastwds/attempts-log/")]
    assert len(attempts) >= len(shards)
    manifest = json.loads(s3.get_object(Bucket="ray-bucket", Key="out/manifest.json")["Body"].read())
    assert manifest["engine"] == "ray" and manifest["totals"] == json.loads(
        (local_parquet / "manifest.json").read_text())["totals"]
