"""Several ``python -m senet_viz`` commands in ONE torchrun launch, for tests/test_distributed.py (a launch costs
three interpreters importing torch; the commands share them).

    python -m torch.distributed.run --standalone --nproc_per_node=N tests/torchrun_commands.py JOBS.json OUT

JOBS.json maps a job name to its argv. Each rank runs the jobs in order through ``cli.main`` (what
``python -m senet_viz`` runs) and writes ``OUT/<name>.rank<r>.{out,err,code}``: its stdout, its stderr and its exit
code (a ``SystemExit`` counts as an exit). The first job runs as in a user's launch: the CLI creates the process
group from the environment and destroys it when the command ends. The later jobs run in one group made here (under
a store prefix of its own, since torch cannot create the default group twice under the same keys), which the CLI
uses and leaves alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from senet_viz import cli


def run_job(argv: list[str], out: Path, name: str, rank: int) -> None:
    base = out / f"{name}.rank{rank}"
    with open(f"{base}.out", "w") as stdout, open(f"{base}.err", "w") as stderr:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = cli.main(argv)
            except SystemExit as exc:  # argparse, or a rank that leaves quietly after another rank's error
                code = exc.code if isinstance(exc.code, int) else 1
    Path(f"{base}.code").write_text(str(code))


def own_group() -> None:
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timedelta(seconds=120))
    dist.init_process_group("gloo", store=dist.PrefixStore("tests/torchrun_commands/", store),
                            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))


def main() -> None:
    jobs: dict[str, list[str]] = json.loads(Path(sys.argv[1]).read_text())
    out, rank = Path(sys.argv[2]), int(os.environ["RANK"])
    try:
        for i, (name, argv) in enumerate(jobs.items()):
            if i == 1:
                own_group()
            run_job(argv, out, name, rank)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
