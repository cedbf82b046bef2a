"""Two nodes on one box: two torchrun agents (`--nnodes=2 --nproc_per_node=1`, c10d on 127.0.0.1, gloo
on the CPU) run the real `retinopathy train`, agree with one node of two processes, write through
rank 0 alone, resume after a node dies, and a node that cannot reach the rendezvous fails in time.

Every test ends only the processes it started, by process group (each agent leads its own, so its
worker goes with it), in a ``finally``.
"""

from __future__ import annotations

import csv
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from conftest import subprocess_env
from retinopathy.engine import checkpoint

pytestmark = pytest.mark.slow

TRAIN = ["-m", "retinopathy", "train", "--init", "scratch"]
EPOCH_LINE = re.compile(r"^scratch epoch (\d)/2:", re.MULTILINE)
AGENT_TIMEOUT = 400  # s: a hung collective must not hang the suite (a loaded 2-core box took over 180 s)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_command(port: int, rdzv_conf: str = "join_timeout=60") -> list[str]:
    """One node's torchrun agent: two nodes, one process each, meeting at 127.0.0.1:``port``."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{port}",
        f"--rdzv_id=nodes-{port}",
        f"--rdzv_conf={rdzv_conf}",
        *TRAIN,
    ]


# The largest file a read-only node may write: Python's tempfile probes its folder with 4 bytes,
# while every output of training (a checkpoint, the history, status.json, a metric) is far larger.
READ_ONLY_BYTES = 16


def no_file_writes() -> None:
    """In the child, before exec: any write that would make a file larger than READ_ONLY_BYTES fails.

    Python ignores SIGXFSZ, so such a write raises OSError (EFBIG): a training process that writes a
    checkpoint, the history, a metric or status.json fails, and with it the run.
    """
    resource.setrlimit(resource.RLIMIT_FSIZE, (READ_ONLY_BYTES, READ_ONLY_BYTES))


@dataclass
class Agent:
    """A torchrun agent started as one node, leading its own process group; its output collected."""

    process: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    readers: list[threading.Thread] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait(self, timeout: float = AGENT_TIMEOUT) -> int:
        code = self.process.wait(timeout)
        for reader in self.readers:
            reader.join(10)
        return code

    def kill(self) -> None:
        """The whole node, as when its machine dies: the agent's group and each worker's.

        torchrun starts every worker in a session of its own (``start_new_session``), so killing the
        group the agent leads leaves the worker running, orphaned: it must be killed too. The workers
        are found before the agent dies (after, they are no longer its children).
        """
        workers = descendants(self.process.pid)
        if self.process.poll() is None or _group_alive(self.process.pid):
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        for pid in workers:
            with suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        self.process.wait(30)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux: /proc/<pid>/task/<tid>/children)."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with suppress(OSError):  # a thread or the process ended meanwhile
            for child in map(int, children.read_text().split()):
                found += [child, *descendants(child)]
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# Rank 0's worker, where the test puts this file as sitecustomize.py on PYTHONPATH: its second
# epoch stops after one step until the node is killed. Without it the kill raced the end of a
# sub-second epoch 2 on a quiet machine, and lost: both nodes finished and the test failed.
PAUSE_IN_EPOCH_2 = """
import os

if os.environ.get("RANK") == "0":  # the worker of rank 0 (torchrun's agents have no RANK)
    import time

    from retinopathy.engine import loops

    epochs, steps = [], []
    real_epoch, real_step = loops.train_epoch, loops.sgd_step

    def train_epoch(*args, **kwargs):
        epochs.append(1)
        steps.clear()
        return real_epoch(*args, **kwargs)

    def sgd_step(*args, **kwargs):
        steps.append(1)
        if len(epochs) == 2 and len(steps) == 2:
            print("paused in epoch 2", flush=True)
            time.sleep(3600)  # until the test kills the node
        return real_step(*args, **kwargs)

    loops.train_epoch, loops.sgd_step = train_epoch, sgd_step
"""


def start_agent(
    command: list[str], folder: Path, *, read_only: bool = False, hooks: Path | None = None
) -> Agent:
    """Start ``command`` in ``folder`` as a node; ``read_only``: none of its processes may write a file;
    ``hooks``: a folder put first on PYTHONPATH (its sitecustomize.py runs in every process of the node).

    Output goes through pipes (a file written by a read-only node would fail too), read by threads.
    """
    env = subprocess_env()
    if read_only:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    if hooks is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hooks), env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        command,
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a node killed whole, nothing else
        preexec_fn=no_file_writes if read_only else None,
    )
    agent = Agent(process)
    assert process.stdout is not None
    stream = process.stdout

    def read() -> None:
        for line in stream:
            agent.lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    agent.readers.append(reader)
    return agent


@contextmanager
def two_nodes(
    folder: Path, *, second_read_only: bool = False, hooks: Path | None = None
) -> Iterator[tuple[Agent, Agent]]:
    """Two agents on a fresh port; the first started (lower PID) becomes node 0, so global rank 0.

    c10d's rendezvous ranks the nodes by (address, PID), and both share the address here.
    ``hooks``: see :func:`start_agent` (both nodes).
    """
    port = free_port()
    agents: list[Agent] = []
    try:
        agents.append(start_agent(node_command(port), folder, hooks=hooks))
        agents.append(start_agent(node_command(port), folder, read_only=second_read_only, hooks=hooks))
        assert agents[0].process.pid < agents[1].process.pid, "PIDs wrapped: rank 0 is not the first"
        yield agents[0], agents[1]
    finally:
        for agent in agents:
            agent.kill()


def last_of(folder: Path) -> checkpoint.LastCheckpoint:
    return checkpoint.load(folder / "models/scratch/last.pt", "last")


def history_of(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metrics/history/scratch.csv") as stream:
        return list(csv.DictReader(stream))


def same_weights(one: checkpoint.LastCheckpoint, other: checkpoint.LastCheckpoint) -> bool:
    return one.model.keys() == other.model.keys() and all(
        torch.equal(one.model[key], other.model[key]) for key in one.model
    )


@pytest.fixture(scope="module")
def two_node_run(_tiny_once, tmp_path_factory) -> Path:
    """The tiny project (40 images at 32 px, 2 epochs, global batch 8) trained by two nodes, uninterrupted.

    The second node may write no file: if rank 1 wrote a checkpoint, the history, status.json or a
    metric, its write would fail and the run with it.
    """
    folder = tmp_path_factory.mktemp("two-nodes")
    shutil.copytree(_tiny_once, folder, symlinks=True, dirs_exist_ok=True)
    with two_nodes(folder, second_read_only=True) as (first, second):
        codes = first.wait(), second.wait()
    assert codes == (0, 0), first.output + second.output
    # Only rank 0 speaks: every epoch line once, all on the first node; nothing of training on the second.
    assert EPOCH_LINE.findall(first.output) == ["1", "2"], first.output
    assert not EPOCH_LINE.findall(second.output) and "scratch: training" not in second.output, second.output
    return folder


def test_two_nodes_train_as_one_node_of_two_processes_would(two_node_run, _tiny_once, tmp_path):
    """Same world size, so the same shards, fingerprint and per-process threads (portable mode: 2 //
    WORLD_SIZE, counted over all nodes on purpose), and a sum of two gradients is the same in either
    order: the topology may not change a bit, so the tolerance is zero."""
    reference = tmp_path / "one-node"
    shutil.copytree(_tiny_once, reference, symlinks=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *TRAIN]
    one_node = subprocess.run(
        command, cwd=reference, env=subprocess_env(), capture_output=True, text=True, timeout=AGENT_TIMEOUT
    )
    assert one_node.returncode == 0, one_node.stdout + one_node.stderr

    nodes, single = last_of(two_node_run), last_of(reference)
    assert nodes.epoch == single.epoch == 2
    assert nodes.fingerprint_inputs.world_size == 2 and nodes.fingerprint == single.fingerprint
    assert same_weights(nodes, single)
    assert history_of(two_node_run) == history_of(reference)
    status = (two_node_run / "models/scratch/status.json").read_text()
    assert status == (reference / "models/scratch/status.json").read_text()


def test_a_node_killed_mid_epoch_resumes_after_the_last_epoch(two_node_run, _tiny_once, tmp_path):
    """Kill rank 0's node (the agent and its worker) in epoch 2, once epoch 1 is saved, then start both
    nodes again. Rank 0 pauses after epoch 2's first step (PAUSE_IN_EPOCH_2), so the kill lands there."""
    folder = tmp_path / "killed"
    shutil.copytree(_tiny_once, folder, symlinks=True)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(PAUSE_IN_EPOCH_2)
    with two_nodes(folder, hooks=hooks) as (first, second):
        deadline = time.monotonic() + AGENT_TIMEOUT
        while "paused in epoch 2" not in first.output:
            assert first.process.poll() is None and time.monotonic() < deadline, first.output
            time.sleep(0.02)
        assert EPOCH_LINE.findall(first.output) == ["1"], first.output  # epoch 1 done and saved
        first.kill()
        assert second.wait() != 0  # the surviving node fails: its partner is gone
    assert last_of(folder).epoch == 1, "the kill came after epoch 2 was saved"

    with two_nodes(folder) as (first, second):
        codes = first.wait(), second.wait()
    assert codes == (0, 0), first.output + second.output
    said = (first.output + second.output).count("resuming after epoch 1 of 2")
    assert said == 1, first.output + second.output  # by rank 0, once
    assert EPOCH_LINE.findall(first.output) == ["2"], first.output

    resumed, uninterrupted = last_of(folder), last_of(two_node_run)
    assert resumed.epoch == 2 and same_weights(resumed, uninterrupted)
    assert history_of(folder) == history_of(two_node_run)


def test_an_unreachable_rendezvous_fails_in_time_naming_the_endpoint(tmp_path):
    """torchrun's own client: it tries for read_timeout, waits up to half of it, tries once more (until
    read_timeout has passed since the first try), then exits naming HOST:PORT; no training starts."""
    port = free_port()  # closed: nobody hosts the rendezvous there
    read_timeout = 5
    agent = start_agent(node_command(port, f"is_host=false,read_timeout={read_timeout}"), tmp_path)
    try:
        started = time.monotonic()
        code = agent.wait(timeout=60)
        seconds = time.monotonic() - started
    finally:
        agent.kill()
    assert code != 0
    assert f"127.0.0.1:{port}" in agent.output and "RendezvousConnectionError" in agent.output
    # read_timeout, plus a retry within it, plus torch's import: well under 4x read_timeout.
    assert seconds < 4 * read_timeout + 10, seconds
    assert not (tmp_path / "models").exists()


def test_a_node_with_other_params_stops_the_run_naming_it(_tiny_once, tmp_path):
    """Each node has its own params.yaml across machines: one that differs must not train under rank 0's
    fingerprint. Here the second node reads another file (train.lr 0.02): both stop before any epoch."""
    shutil.copytree(_tiny_once, tmp_path, symlinks=True, dirs_exist_ok=True)
    other = (tmp_path / "params.yaml").read_text().replace("lr: 0.01", "lr: 0.02")
    assert other != (tmp_path / "params.yaml").read_text()
    (tmp_path / "other.yaml").write_text(other)
    port = free_port()
    agents: list[Agent] = []
    try:
        agents.append(start_agent(node_command(port), tmp_path))
        agents.append(start_agent([*node_command(port), "--params", "other.yaml"], tmp_path))
        codes = [agent.wait() for agent in agents]
    finally:
        for agent in agents:
            agent.kill()
    assert codes[0] != 0 and codes[1] != 0
    message = f"differs on rank 1 on {socket.gethostname()}"
    assert message in agents[0].output, agents[0].output  # said by rank 0, naming the node
    assert "check out the same commit and run `dvc pull`" in agents[0].output
    assert not EPOCH_LINE.search(agents[0].output + agents[1].output)
    assert not (tmp_path / "models/scratch/last.pt").exists()
