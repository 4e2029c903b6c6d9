"""A seeded fuzz of the run folder (issue 22, item 8): a real finished folder, its ``summary.json`` and files
mutated a few hundred times, each copy rerun once.

Invariants checked after every rerun:

1. no checkpoint is lost: each one is still in the folder (kept, resumed, or set aside as an orphan);
2. nothing outside the folder is written (a sentinel folder next to it, the targets of planted links);
3. nothing in the folder runs code (a crafted checkpoint would touch a marker file);
4. the rerun either returns, or refuses with ``RecordError`` / a ``ValueError`` naming the folder; every
   other exception (a raw torch, OS or arithmetic error) is a failure;
5. what it returns is true: a finished seed's score is what its own best checkpoint holds, ``best.ckpt``
   holds the best score, and a seed trains again (here: fails with ``RetrainBlocked``) only when it
   resumed from its own ``last.ckpt``, or after its old folder was set aside, or held no checkpoint.

The mutator is a plain ``random.Random(SEED)``: a failing example is reproduced by its number.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _adversarial import NoTraining, checkpoints, crafted, lost, run, stored_score, tree

from lightning_landscape.multiseed import RecordError

SEED = 22
EXAMPLES = 120
SEEDS = (0, 1)

NASTY: list[Any] = [
    None, True, False, 0, -1, 3, 2**63, 10**400, 1e308, -1e308, 1e-320, 0.5, float("nan"), float("inf"),
    "", "x", "0.1", "../outside/precious.txt", "/etc/passwd", "seed_0/" + "x" * 5000, "seed_0/a\x00b.ckpt",
    "summary.json", "seeds.png", "best.ckpt", ".lock", "seed_0/checkpoints/last.ckpt",
    "seed_1/checkpoints/last.ckpt", "seed_0", ".", "seed_0/checkpoints/" + "y" * 300 + ".ckpt",
    [], {}, [1, 2], {"a": 1},
]  # fmt: skip
PATH_KEYS = ("best_model_path", "last_model_path", "log_dir")
STATUSES = ("finished", "failed", "pending", "running", "done")
EXTRA_KEYS = ("best_step", "last_step", "attempt_started", "resumed_from", "diverged")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz_base") / "run"
    run(root, test="none")
    return root


# --- record mutations ------------------------------------------------------------------------------------
def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [path] + [p for k, v in node.items() for p in _leaves(v, (*path, k))]
    if isinstance(node, list):
        return [path] + [p for i, v in enumerate(node) for p in _leaves(v, (*path, i))]
    return [path]


def _at(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def _run_entry(rng: random.Random, data: dict[str, Any]) -> dict[str, Any] | None:
    runs = data.get("runs")
    if isinstance(runs, list) and runs and isinstance(runs[0], dict):
        return runs[rng.randrange(len(runs))]
    return None


def m_any_leaf(rng: random.Random, data: dict[str, Any]) -> str:
    paths = [p for p in _leaves(data) if p]
    path = rng.choice(paths)
    value = rng.choice(NASTY)
    _at(data, path[:-1])[path[-1]] = value
    return f"{'.'.join(map(str, path))}={value!r:.40}"


def m_delete_key(rng: random.Random, data: dict[str, Any]) -> str:
    paths = [p for p in _leaves(data) if p and isinstance(_at(data, p[:-1]), dict)]
    path = rng.choice(paths)
    del _at(data, path[:-1])[path[-1]]
    return f"del {'.'.join(map(str, path))}"


def m_status(rng: random.Random, data: dict[str, Any]) -> str:
    entry = _run_entry(rng, data)
    if entry is None:
        return "no runs"
    entry["status"] = rng.choice(STATUSES)
    return f"seed {entry.get('seed')}.status={entry['status']}"


def m_path(rng: random.Random, data: dict[str, Any]) -> str:
    entry = _run_entry(rng, data)
    if entry is None:
        return "no runs"
    key = rng.choice(PATH_KEYS)
    entry[key] = rng.choice([v for v in NASTY if isinstance(v, str)] + [rng.choice(NASTY)])
    return f"seed {entry.get('seed')}.{key}={entry[key]!r:.40}"


def m_score(rng: random.Random, data: dict[str, Any]) -> str:
    entry = _run_entry(rng, data)
    if entry is None:
        return "no runs"
    score = entry.get("score")
    options = [rng.choice(NASTY), -1.0, 0.0]
    if isinstance(score, float):
        options += [score * 0.5, score + 1e-3, -score]
    entry["score"] = rng.choice(options)
    return f"seed {entry.get('seed')}.score={entry['score']!r:.40}"


def m_extra(rng: random.Random, data: dict[str, Any]) -> str:
    entry = _run_entry(rng, data)
    if entry is None or not isinstance(entry.get("extra"), dict):
        return "no extra"
    key = rng.choice(EXTRA_KEYS)
    entry["extra"][key] = rng.choice([*NASTY, -5, 7, 10**30])
    return f"seed {entry.get('seed')}.extra.{key}={entry['extra'][key]!r:.40}"


def m_runs_list(rng: random.Random, data: dict[str, Any]) -> str:
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        return "no runs"
    choice = rng.randrange(4)
    if choice == 0:
        runs.append(json.loads(json.dumps(runs[0])))
        return "duplicate run"
    if choice == 1:
        runs.pop(rng.randrange(len(runs)))
        return "drop run"
    if choice == 2 and isinstance(runs[0], dict):
        runs[0]["seed"], runs[-1]["seed"] = runs[-1].get("seed"), runs[0].get("seed")
        return "swap seeds"
    runs.reverse()
    return "reverse runs"


def m_top(rng: random.Random, data: dict[str, Any]) -> str:
    key = rng.choice(["version", "monitor", "mode", "fingerprint", "seeds", "best_seed", "best_score"])
    data[key] = rng.choice([*NASTY, "max", "val_acc", 1, 2, 3])
    return f"{key}={data[key]!r:.40}"


RECORD_MUTATIONS: list[Callable[[random.Random, dict[str, Any]], str]] = [
    m_any_leaf, m_delete_key, m_status, m_status, m_path, m_path, m_score, m_score, m_extra, m_runs_list,
    m_top,
]  # fmt: skip


def mutate_record(rng: random.Random, root: Path) -> str:
    path = root / "summary.json"
    kind = rng.randrange(10)
    if kind == 0:  # raw text damage
        text = path.read_bytes()
        cut = rng.randrange(len(text))
        path.write_bytes(rng.choice([text[:cut], text[:cut] + b"NaN" + text[cut:], bytes(rng.randbytes(64))]))
        return f"summary.json bytes damaged at {cut}"
    data = json.loads(path.read_text())
    done = [rng.choice(RECORD_MUTATIONS)(rng, data) for _ in range(rng.randint(1, 2))]
    path.write_text(json.dumps(data, indent=2))
    return "; ".join(done)


# --- file mutations --------------------------------------------------------------------------------------
def _ckpts(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.ckpt") if p.is_file() and not p.is_symlink())


def mutate_file(rng: random.Random, root: Path, outside: Path) -> str:
    files = _ckpts(root)
    kind = rng.randrange(9)
    target = rng.choice(files) if files else root / "best.ckpt"
    name = str(target.relative_to(root))
    if kind == 0:
        data = target.read_bytes()
        target.write_bytes(data[: rng.randrange(len(data))])
        return f"truncate {name}"
    if kind == 1:
        target.write_bytes(rng.randbytes(rng.choice([0, 16, 4096])))
        return f"garbage {name}"
    if kind == 2:
        crafted(target, outside / "pwned")
        return f"crafted {name}"
    if kind == 3:
        target.unlink()
        return f"delete {name}"
    if kind == 4 and len(files) >= 2:
        a, b = rng.sample(files, 2)
        tmp = a.with_name(".swap")
        a.rename(tmp)
        b.rename(a)
        tmp.rename(b)
        return f"swap {a.relative_to(root)} {b.relative_to(root)}"
    if kind == 5:
        link = root / rng.choice([".lock", "seeds.png", "best_of_k.png", "summary.csv", "best.ckpt"])
        link.unlink(missing_ok=True)
        link.symlink_to(outside / "precious.txt")
        return f"link {link.name} -> outside"
    if kind == 6:
        seed = rng.choice(SEEDS)
        folder = root / f"seed_{seed}" / "checkpoints"
        shutil.copytree(folder, outside / f"copy_{seed}")
        shutil.rmtree(folder)
        folder.symlink_to(outside / f"copy_{seed}", target_is_directory=True)
        return f"link seed_{seed}/checkpoints -> outside"
    if kind == 7:
        lock = root / ".lock"
        lock.unlink(missing_ok=True)
        lock.mkdir()
        return ".lock is a directory"
    (root / "seed_1" / "checkpoints" / "last.ckpt").unlink(missing_ok=True)
    return "delete seed_1 last.ckpt"


# --- the check -------------------------------------------------------------------------------------------
def held(path: str) -> float:
    """What a checkpoint holds for the monitor; NaN when it does not load (then no score may be claimed)."""
    try:
        return stored_score(path) or math.nan
    except Exception:
        return math.nan


def check(
    root: Path, outside: Path, work: Path, before: dict[str, Any], snapshot: dict[str, Any]
) -> list[str]:
    problems: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = run(root, test="none", trainer={"callbacks": [NoTraining()]})
        except RecordError as err:
            result = None
            if str(root) not in str(err):
                problems.append(f"RecordError not naming a file of the folder: {err}")
        except ValueError as err:
            result = None
            if str(root) not in str(err) and "root_dir" not in str(err):
                problems.append(f"ValueError not naming the folder: {type(err).__name__}: {err}")
        except RuntimeError as err:
            result = None
            if not ("seeds failed" in str(err) and "RetrainBlocked" in str(err)):
                problems.append(f"raw {type(err).__name__}: {str(err)[:300]}")
        except Exception as err:
            result = None
            problems.append(f"raw {type(err).__name__}: {str(err)[:300]}")
    gone = lost(before, root)
    if gone:
        problems.append(f"checkpoints lost: {gone}")
    if tree(outside) != snapshot:
        problems.append("something outside the folder was written")
    if sorted(p.name for p in work.iterdir()) != ["outside", "run"]:
        problems.append(f"something was written next to the folder: {sorted(work.iterdir())}")
    if (outside / "pwned").exists():
        problems.append("a file of the folder ran code")
    if result is not None:
        for r in result.runs:
            if r.status == "finished":
                own = (root / f"seed_{r.seed}").resolve()
                if not Path(r.best_model_path).resolve().is_relative_to(own):
                    problems.append(f"seed {r.seed}: best checkpoint outside its folder: {r.best_model_path}")
                elif not math.isclose(held(r.best_model_path), r.score, rel_tol=1e-6):
                    problems.append(f"seed {r.seed}: score {r.score} is not what its checkpoint holds")
            else:
                had = any(name.startswith(f"seed_{r.seed}/") for name in before)
                resumed = "resumed_from" in r.extra  # from its own last.ckpt, which says training went on
                if had and not resumed and not list(root.glob(f"seed_{r.seed}.orphan-*")):
                    problems.append(f"seed {r.seed} retrained ({r.error}) without setting its folder aside")
        if result.best_model_path and not math.isclose(
            held(result.best_model_path), result.best_score, rel_tol=1e-6
        ):
            problems.append("best.ckpt does not hold the best score")
    return problems


@pytest.mark.slow
def test_the_run_folder_keeps_its_invariants_under_a_seeded_fuzz(base: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    np.random.seed(SEED)
    failures: list[str] = []
    start = time.perf_counter()
    for i in range(EXAMPLES):
        work = tmp_path / f"example_{i}"
        root, outside = work / "run", work / "outside"
        shutil.copytree(base, root, symlinks=True)
        outside.mkdir()
        (outside / "precious.txt").write_text("precious")
        what = []
        kind = rng.randrange(3)
        if kind in (0, 2):
            what.append(mutate_record(rng, root))
        if kind in (1, 2):
            what.append(mutate_file(rng, root, outside))
        before, snapshot = checkpoints(root), tree(outside)
        problems = check(root, outside, work, before, snapshot)
        if problems:
            failures.append(f"example {i} [{'; '.join(what)}]: {' | '.join(problems)}")
        shutil.rmtree(work, ignore_errors=True)
    took = time.perf_counter() - start
    assert not failures, (
        f"{len(failures)} of {EXAMPLES} examples broke an invariant ({took:.0f} s):\n"
        + "\n".join(failures[:25])
    )
