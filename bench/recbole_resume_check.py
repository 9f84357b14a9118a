"""Check that RecBole's SASRec runner, interrupted twice and resumed, repeats an uninterrupted run.

The SASRec table (``bench/sasrec_vs_peers.py --state-dir``) relies on it for seeds whose RecBole
training outlasts a sitting. On a small slice of the table's ml-100k (the first ``--users`` users
of the aligned copy, same protocol), the runner trains ``--epochs`` epochs straight through, then
again with a state folder in three invocations (stopped after 2 epochs, then after 1 more, then to
the end), and a fourth that must return the finished result without training. Every train loss,
every validation NDCG@10, the best validation score and the test metrics must be equal, bit for
bit; the process exits with status 1 otherwise.

    .venv/bin/python bench/recbole_resume_check.py            # about 5 min at 2 threads
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from recbole_env import ensure_recbole_venv  # noqa: E402
from sasrec_vs_peers import aligned_ml100k  # noqa: E402

COMPARED = ("train_loss", "valid_ndcg@10", "best_valid_ndcg@10", "test", "epochs")


def slice_users(root: Path, users: int) -> Path:
    """Keep the first ``users`` users (in file order) of ``root/ml-100k/ml-100k.inter``, in place."""
    inter = root / "ml-100k" / "ml-100k.inter"
    header, *lines = inter.read_text(encoding="utf-8").splitlines()
    kept, seen = [], []
    for line in lines:
        user = line.split("\t", 1)[0]
        if user not in seen:
            if len(seen) == users:
                break
            seen.append(user)
        kept.append(line)
    inter.write_text("\n".join([header, *kept]) + "\n", encoding="utf-8")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    python = ensure_recbole_venv()
    with tempfile.TemporaryDirectory(prefix="recbole-resume-check-") as scratch:
        work = Path(scratch)
        data = slice_users(aligned_ml100k(work / "data"), args.users)

        def runner(out: str, *extra: str) -> int:
            command = [
                str(python),
                str(REPO / "bench" / "recbole_sasrec_runner.py"),
                "--epochs",
                str(args.epochs),
            ]
            command += ["--data_path", str(data), "--out", str(work / out), *extra]
            env = {"OMP_NUM_THREADS": str(args.threads), "PATH": "/usr/bin:/bin"}
            return subprocess.run(command, env=env, cwd=work, stdout=subprocess.DEVNULL).returncode

        if runner("straight.json") != 0:
            sys.exit("the uninterrupted run failed")
        state = ("--state-dir", str(work / "state"))
        codes = [runner("split.json", *state, "--stop-after-epochs", "2")]
        codes.append(runner("split.json", *state, "--stop-after-epochs", "1"))
        codes.append(runner("split.json", *state))
        codes.append(runner("again.json", *state))  # finished: its result, without training
        if codes != [3, 3, 0, 0]:
            sys.exit(f"the split run's exit statuses are {codes}, expected [3, 3, 0, 0]")
        straight = json.loads((work / "straight.json").read_text())
        split = json.loads((work / "split.json").read_text())
        again = json.loads((work / "again.json").read_text())
    if again != {**split, "finished_earlier": True}:
        sys.exit("starting the finished run again did not return its result")
    print(f"resumed at completed epochs: {split['resumed_at_epochs']}")
    differ = [key for key in COMPARED if straight[key] != split[key]]
    for key in COMPARED:
        print(f"{key:>20}: {'equal' if key not in differ else 'DIFFERENT'}  {split[key]}")
    seconds = {name: sum(run["epoch_seconds"]) for name, run in (("straight", straight), ("split", split))}
    print(f"{'train seconds':>20}: straight {seconds['straight']:.1f}, split {seconds['split']:.1f}")
    if differ:
        sys.exit(f"the split run differs from the uninterrupted one in {differ}")
    print("the split run repeats the uninterrupted one exactly")


if __name__ == "__main__":
    main()
