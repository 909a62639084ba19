"""Weight sync against model size: the learner's push (``trainer.weight_sync.file``: stage the weights, rewritten in
place where the stack's learner stages them, then pause generation, load in place, relabel, resume) in seconds
and bytes per second, beside copying the same tensors in memory in the same process (the floor any transport is
measured against).

Sizes: the benchmark model, on the stack's generation server, and random Llamas of the ladder's sizes (built by
the tiny model's builder), each on a generation server of its own started for it.
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, computed_field

from benchmarks.report import Table
from benchmarks.session import BenchError, Session
from benchmarks.settings import LadderModel, Placement, Scale
from cfpo.cli.stack import stop_process_group
from cfpo.clients.generation import GenerationClient

RUN_LABEL = "bench-weight-sync"
SERVER_START_TIMEOUT = 600.0


class WeightSyncRow(BaseModel):
    model: str
    parameters: int
    bytes: int  # what generation loads: every tensor but a tied output head
    export_seconds: list[float]  # staging: the rewrite of the staged file
    update_seconds: list[float]  # pause, load in place, relabel, reset prefix cache, resume
    copy_seconds: list[float]  # clone of the same tensors in memory

    @computed_field
    @property
    def push_seconds(self) -> float:
        return statistics.median(e + u for e, u in zip(self.export_seconds, self.update_seconds))

    @computed_field
    @property
    def push_bytes_per_second(self) -> float:
        return self.bytes / self.push_seconds

    @computed_field
    @property
    def copy_bytes_per_second(self) -> float:
        return self.bytes / statistics.median(self.copy_seconds)


class WeightSync(BaseModel):
    rows: list[WeightSyncRow]
    threads: int  # torch threads of the export and the copy


def planned_runs(scale: Scale) -> set[tuple[int, Placement]]:
    return set()


def run(session: Session) -> tuple[WeightSync, list[Table]]:
    import torch

    threads = session.learner_threads  # export and copy with the learner's threads, as its pushes run
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows = [_measure(session, session.settings.label, session.model_dir, session.stack.generation_url)]
        for size in session.scale.weight_ladder:
            directory = _ladder_model(session, size)
            with _generation_server(session, directory) as url:
                rows.append(_measure(session, size.name, directory, url))
    finally:
        torch.set_num_threads(before)
    result = WeightSync(rows=rows, threads=threads)
    return result, [_table(session, result)]


def _measure(session: Session, name: str, model_dir: Path, generation_url: str) -> WeightSyncRow:
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.weight_sync.file import FileWeightSync

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    run = f"{RUN_LABEL}-{name}"
    export, update, copy = [], [], []
    tensors = {t.data_ptr(): t.detach() for t in model.state_dict().values()}.values()  # tied ones once
    with (
        session.activity(f"weight sync of {name} x{session.scale.repeats}"),
        contextlib.closing(GenerationClient(generation_url)) as client,
    ):
        transport = FileWeightSync([client], session.stack.weights_dir or session.work / "weight-sync")
        # The copies first, while generation is idle: right after a push vLLM's threads still spin from the load
        # and a copy then measured a fifth of the idle machine's rate, which is no floor.
        for _ in range(session.scale.repeats + 1):  # the first untimed, as the pushes'
            started = time.perf_counter()
            copies = [t.clone() for t in tensors]
            copy.append(time.perf_counter() - started)
            del copies
        for version in range(1, session.scale.repeats + 2):  # the first untimed (it writes the file anew)
            pushed = transport.push(model, version, run=run)
            assert pushed is not None, "a lone process is rank 0"
            export.append(pushed.staging_seconds)
            update.append(pushed.seconds)
        transport.release(run)
    return WeightSyncRow(
        model=name,
        parameters=sum(p.numel() for p in model.parameters()),
        bytes=pushed.bytes,
        export_seconds=export[1:],
        update_seconds=update[1:],
        copy_seconds=copy[1:],
    )


def _ladder_model(session: Session, size: LadderModel) -> Path:
    from cfpo.models import build_tiny_model

    directory = session.work / "models" / size.name
    if not (directory / "config.json").is_file():
        with session.activity(f"building the random model {size.name}"):
            build_tiny_model(directory, hidden_size=size.hidden_size, layers=size.layers, heads=size.heads)
    return directory


@contextlib.contextmanager
def _generation_server(session: Session, model_dir: Path) -> Iterator[str]:
    """A generation server on ``model_dir`` on a free loopback port, for as long as the block runs."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log_path = session.work / "logs" / f"generation-{model_dir.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.generation", "--model", str(model_dir), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        with session.activity(f"starting generation on {model_dir.name}"):
            _wait_ready(process, url, log_path)
        yield url
    finally:
        stop_process_group(process)


def _wait_ready(process: subprocess.Popen, url: str, log_path: Path) -> None:
    import httpx

    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise BenchError(f"generation on {url} did not come up\n--- {log_path} (tail) ---\n{tail}")
        time.sleep(0.5)


def _table(session: Session, result: WeightSync) -> Table:
    staged_in = session.stack.weights_dir or "the benchmark's work folder"
    table = Table(
        "Weight sync: learner to generation, by model size",
        [
            "model",
            "parameters",
            "MB",
            "staging s",
            "load in generation s",
            "push s",
            "push MB/s",
            "memory copy MB/s",
            "push / copy time",
        ],
        caption=(
            f"Medians of {session.scale.repeats}. push = staging (the staged safetensors file "
            f"rewritten in place, in {staged_in}) + load in generation (pause, load in place, relabel, "
            "reset prefix cache, resume; generation waits only here), as the learner pushes after "
            "every optimizer step. Staging and memory copy (torch clone of the same tensors, before "
            f"the pushes, generation idle) with the stack learner's {result.threads} thread(s). "
            "MB = 10^6 bytes; tied output heads are not sent."
        ),
    )
    for row in result.rows:
        copy = statistics.median(row.copy_seconds)
        table.add(
            row.model,
            f"{row.parameters / 1e6:.2f}M",
            row.bytes / 1e6,
            statistics.median(row.export_seconds),
            statistics.median(row.update_seconds),
            row.push_seconds,
            row.push_bytes_per_second / 1e6,
            row.copy_bytes_per_second / 1e6,
            row.push_seconds / copy,
        )
    return table
