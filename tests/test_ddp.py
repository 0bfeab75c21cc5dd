"""DistributedDataParallel over rnnfast modules: 2 gloo ranks on loopback.

Each rank trains the same model (an rnnfast LSTM or GRU and a linear head) for a few SGD steps on
its own half of every global batch.  After every step the parameters must be bitwise identical on
both ranks (DDP all-reduces the gradients, every rank applies the same update) and equal to what
one process computes on the whole global batch with the mean loss.

One pair of worker processes (spawned: no fork of a process that already runs torch's thread
pools) runs every model and dtype, so the interpreter start-up is paid once; the results come back
through files and each model/dtype is its own test (one xdist group: under pytest-xdist all of them
go to one worker, so the pair runs once there too).  The rendezvous store is a TCPStore that this
process opens on port 0, so the OS picks a free port and there is no race for it.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
import time
import traceback

import pytest
import torch

dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available in this torch build", allow_module_level=True)
if not dist.is_gloo_available():
    pytest.skip("the gloo backend of torch.distributed is not available in this torch build", allow_module_level=True)

import torch.multiprocessing as mp  # noqa: E402

pytestmark = pytest.mark.xdist_group("ddp")  # the scripts run xdist with --dist loadgroup

WORLD_SIZE = 2
STEPS = 4
TIMEOUT_S = 120  # generous cap for a shared machine; the job takes a few seconds


@dataclasses.dataclass(frozen=True)
class Job:
    mode: str  # LSTM or GRU
    dtype: torch.dtype
    num_layers: int = 2
    bidirectional: bool = False
    batch_first: bool = False
    gradient_as_bucket_view: bool = False
    input_size: int = 3
    hidden_size: int = 5
    seq_len: int = 6
    local_batch: int = 3

    @property
    def id(self) -> str:
        parts = [self.mode, str(self.dtype).removeprefix("torch."), f"L{self.num_layers}"]
        if self.bidirectional:
            parts.append("bi")
        if self.batch_first:
            parts.append("bf")
        if self.gradient_as_bucket_view:
            parts.append("bucketview")
        return "-".join(parts)


JOBS = [
    Job("LSTM", torch.float32),
    Job("LSTM", torch.float64, bidirectional=True, batch_first=True),
    Job("GRU", torch.float32, gradient_as_bucket_view=True),
    Job("GRU", torch.float64, bidirectional=True),
]


class Model(torch.nn.Module):
    def __init__(self, job: Job):
        super().__init__()
        import rnnfast

        self.job = job
        self.rnn = getattr(rnnfast, job.mode)(
            job.input_size, job.hidden_size, num_layers=job.num_layers, bidirectional=job.bidirectional,
            batch_first=job.batch_first, dtype=job.dtype,
        )
        directions = 2 if job.bidirectional else 1
        self.head = torch.nn.Linear(directions * job.hidden_size, 2, dtype=job.dtype)

    def forward(self, x):
        output, _ = self.rnn(x)
        return self.head(output)


def build_model(job: Job) -> Model:
    torch.manual_seed(1234)  # the same initial weights everywhere (DDP would broadcast rank 0's)
    return Model(job)


def global_batch(job: Job, step: int):
    """The step's global batch (x, target), the same in every process; never zeros."""
    generator = torch.Generator().manual_seed(1000 + step)
    batch = WORLD_SIZE * job.local_batch
    x = torch.randn(job.seq_len, batch, job.input_size, generator=generator, dtype=job.dtype)
    target = torch.randn(job.seq_len, batch, 2, generator=generator, dtype=job.dtype)
    if job.batch_first:
        x, target = x.transpose(0, 1).contiguous(), target.transpose(0, 1).contiguous()
    return x, target


def local_part(job: Job, tensor: torch.Tensor, rank: int) -> torch.Tensor:
    dim = 0 if job.batch_first else 1
    return tensor.narrow(dim, rank * job.local_batch, job.local_batch)


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def train(model, job: Job, batches, step_hook=None):
    """SGD with momentum on the given (x, target) per step; returns the flat parameters after
    every step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = []
    for step, (x, target) in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), target)  # mean over the (local) batch
        loss.backward()
        optimizer.step()
        history.append(flat_params(model.module if hasattr(model, "module") else model))
        if step_hook is not None:
            step_hook(step)
    return history


def worker(rank: int, port: int, out_dir: str) -> None:
    """One DDP rank: train every job, check the ranks agree after each step, save the history."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    if os.path.exists("/sys/class/net/lo"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    try:
        store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=60))
        dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD_SIZE)
        results = {}
        for job in JOBS:
            model = torch.nn.parallel.DistributedDataParallel(
                build_model(job), gradient_as_bucket_view=job.gradient_as_bucket_view
            )
            batches = [
                tuple(local_part(job, t, rank) for t in global_batch(job, step)) for step in range(STEPS)
            ]
            mismatches = []

            def compare_ranks(step, model=model, mismatches=mismatches):
                mine = flat_params(model.module)
                gathered = [torch.empty_like(mine) for _ in range(WORLD_SIZE)]
                dist.all_gather(gathered, mine)
                if not all(torch.equal(g, gathered[0]) for g in gathered):
                    diff = max((g - gathered[0]).abs().max().item() for g in gathered)
                    mismatches.append(f"step {step}: parameters differ between ranks by {diff}")

            history = train(model, job, batches, compare_ranks)
            results[job.id] = dict(history=history, mismatches=mismatches)
        dist.barrier()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # both ranks' results are on disk
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.error"), "w") as f:
            f.write(traceback.format_exc())
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    # Done: leave without tearing gloo down. Its teardown at exit has aborted a rank now and then
    # ("terminate called without an active exception", exit -6) after the work was finished and
    # saved; the results are checked from the files, so the process ends here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """Runs the two ranks once; returns (per-rank results, wall seconds of the job)."""
    out_dir = tmp_path_factory.mktemp("ddp")
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)  # OS-chosen port
    saved_env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # inherited by the children
    context = mp.get_context("spawn")
    start = time.monotonic()
    processes = [context.Process(target=worker, args=(rank, store.port, str(out_dir))) for rank in range(WORLD_SIZE)]
    try:
        for p in processes:
            p.start()
        deadline = time.monotonic() + TIMEOUT_S
        for p in processes:
            p.join(max(0.0, deadline - time.monotonic()))
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        hung = [p for p in processes if p.is_alive()]
        for p in hung:
            p.kill()
            p.join()
    elapsed = time.monotonic() - start
    errors = [(out_dir / f"rank{r}.error") for r in range(WORLD_SIZE)]
    details = "\n".join(f"rank {r}:\n{e.read_text()}" for r, e in enumerate(errors) if e.exists())
    assert not hung, f"DDP workers did not finish within {TIMEOUT_S} s\n{details}"
    codes = [p.exitcode for p in processes]
    assert codes == [0] * WORLD_SIZE, f"DDP workers exited with {codes}\n{details}"
    results = [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]
    return results, elapsed


TOLERANCE = {torch.float64: dict(rtol=1e-9, atol=1e-11), torch.float32: dict(rtol=2e-5, atol=2e-6)}


@pytest.mark.parametrize("job", JOBS, ids=[j.id for j in JOBS])
def test_ddp_matches_single_process(ddp_results, job):
    results, _ = ddp_results
    torch.set_num_threads(1)
    x, _ = global_batch(job, 0)
    halves = [local_part(job, x, rank) for rank in range(WORLD_SIZE)]
    assert not torch.equal(halves[0], halves[1]) and halves[0].abs().min() > 0, "premise: ranks get different data"
    per_rank = [r[job.id] for r in results]
    for rank, r in enumerate(per_rank):
        assert not r["mismatches"], f"rank {rank}: " + "; ".join(r["mismatches"])
        assert len(r["history"]) == STEPS
    for step in range(STEPS):
        assert torch.equal(per_rank[0]["history"][step], per_rank[1]["history"][step]), f"ranks differ at step {step}"

    reference = build_model(job)
    initial = flat_params(reference)
    expected = train(reference, job, [global_batch(job, step) for step in range(STEPS)])
    previous = initial
    for step, (actual, want) in enumerate(zip(per_rank[0]["history"], expected)):
        assert actual.dtype == job.dtype
        assert not torch.equal(want, previous), f"step {step} did not change the parameters"
        torch.testing.assert_close(
            actual, want, **TOLERANCE[job.dtype],
            msg=lambda m, step=step: f"{job.id}: DDP parameters after step {step} differ from one process:\n{m}",
        )
        previous = want
