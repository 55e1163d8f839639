"""Write the training record of the default model (tokentrim_cli/scenes_model/training.json) from
the logs of the runs that produced its weights (scripts/train_scenes_model.py --log FILE).

    python scripts/record_training.py run1.log [run2.log ...] --date 2026-12-01 \
        --log-date run12.log=2026-12-02 --not-adopted run8.log ... --output tokentrim_cli/scenes_model/training.json

Every log becomes one entry, oldest first: the command line rebuilt from its logged arguments,
the start and end times, wall minutes, the loss and held-out scores at each logged step, and where it
stopped (a log's times carry no day: `--date`, and `--log-date` for a log started on
another day). Each entry carries the versions and CPU of this environment (run the script in the
environment that trained); the top-level "versions" are those of the runs recorded before entries
carried their own, and `--append` keeps them.
`--not-adopted` logs are runs whose weights were compared on held-out pictures and not shipped:
recorded apart ("not_adopted"), outside the shipped weights' runs and minutes. `--adopt run23.log
run24.log ...` moves recorded not-adopted runs into the shipped weights' runs, in that order, when
their weights become the shipped ones: each must have continued from the one before it (`--init`),
the first from the shipped folder (with `--adopt-soup`, a soup's runs may each have started from
the shipped folder, as branches).
`--append` keeps the entries already in `--output` and adds these logs after them (the logs of
earlier sessions' runs are not kept; training.json is their record).
`--soup NAME=A.log,B.log,... --soup-rank R` records a uniform soup of recorded runs' weights
(`scripts/interpolate_trained.py runs/A runs/B ... --mean --rank R --out runs/NAME`): it trains
nothing, so it is kept apart ("soups"), with the command that rebuilds it from its runs' folders.
`--adopt run50.log run52.log --adopt-soup soup50-52` records that the shipped weights are that
soup: its runs must be the last of the shipped weights' runs (adopted with it), and it is marked shipped.
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import re
import sys
from pathlib import Path

LINE = re.compile(r"^\[(\d\d:\d\d:\d\d)\] (.*)$")
STEP = re.compile(r"^step (\d+)/(\d+) loss ([\d.]+) ((?:\w+ probe loss [\d.]+ right [\d.]+ )*)lr ([\d.e+-]+) ([\d.]+) min$")
PROBE = re.compile(r"(\w+) probe loss ([\d.]+) right ([\d.]+)")  # each training-only probe's, as logged
HELD_OUT = re.compile(r"^held-out after step (\d+): (\{.*\})$")
ALIGNMENT_HELD_OUT = re.compile(r"^held-out after stage 0: (\{.*\})$")
STAGE = re.compile(r"^stage (\d): (.*), (\d+) steps$")
BUDGET = re.compile(r"^time budget of [\d.]+ min reached at step (\d+)$")  # that many steps were done


def command(arguments: dict) -> str:
    """The command line that reproduces a run from its logged arguments."""
    parts = ["python", "scripts/train_scenes_model.py"]
    for key, value in arguments.items():
        if value in ("None", "False") or key == "log":
            continue
        if value == "True":  # a flag (--distinct)
            parts.append(f"--{key.replace('_', '-')}")
            continue
        if value.startswith("{"):  # --type-weights, logged as a dict: back to its command-line form
            value = ",".join(f"{kind}={weight:g}" for kind, weight in ast.literal_eval(value).items())
        elif value.startswith("("):  # --relations, logged as a tuple
            value = ",".join(ast.literal_eval(value))
        parts += [f"--{key.replace('_', '-')}", value]
    return " ".join(parts)


def parse(log: Path) -> dict:
    arguments, stages, stage, first, last, stopped = None, [], None, None, None, None
    alignment: list = []
    for raw in log.read_text(encoding="utf-8").splitlines():
        match = LINE.match(raw)
        if not match:
            continue
        time, message = match.groups()
        first = first or time
        last = time
        if message.startswith("arguments: "):
            arguments = json.loads(message[len("arguments: ") :])
        elif message.startswith("stage 0: "):  # the projector's alignment: its progress lines as logged
            alignment.append(message[len("stage 0: ") :])
        elif m := ALIGNMENT_HELD_OUT.match(message):
            alignment.append({"held_out": json.loads(m.group(1))})
        elif m := STAGE.match(message):
            stage = {"stage": int(m.group(1)), "what": m.group(2), "steps_planned": int(m.group(3)), "log": [], "held_out": []}
            stages.append(stage)
        elif (m := STEP.match(message)) and stage is not None:
            entry = {"step": int(m.group(1)), "loss": float(m.group(3)), "lr": float(m.group(5)), "minutes": float(m.group(6))}
            for name, loss, right in PROBE.findall(m.group(4)):  # every --*-probe-layer: each probe's own
                entry |= {f"{name}_probe_loss": float(loss), f"{name}_probe_right": float(right)}  # loss (in the loss above)
            stage["log"].append(entry)
        elif (m := HELD_OUT.match(message)) and stage is not None:
            stage["held_out"].append({"step": int(m.group(1)), **json.loads(m.group(2))})
        elif message.startswith(("time budget", "done in")):
            stopped = f"{stopped}; {message}" if stopped else message
            if (m := BUDGET.match(message)) and stage is not None:
                stage["steps_done"] = int(m.group(1))  # the log's last step line can be up to --log-every behind
    if arguments is None:
        raise SystemExit(f"{log}: no 'arguments:' line (not a train_scenes_model.py log)")
    for stage in stages:
        stage.setdefault("steps_done", stage["log"][-1]["step"] if stage["log"] else 0)
    return {"log": log.name, "command": command(arguments), "arguments": arguments, "started": first, "ended": last,
            "minutes": round(_minutes(first, last), 1), "stopped": stopped, "alignment": alignment, "stages": stages}  # fmt: skip


def _minutes(start: str, end: str) -> float:
    """Wall minutes between two HH:MM:SS stamps of one log (a run may pass midnight)."""
    def seconds(stamp: str) -> int:
        h, m, s = map(int, stamp.split(":"))
        return 3600 * h + 60 * m + s

    return ((seconds(end) - seconds(start)) % 86400) / 60


def log_dates(pairs: list[str], names: list[str]) -> dict[str, str]:
    """{"run12.log": "2026-12-02"} from ["run12.log=2026-12-02"]; a name that is not one of the
    logs, or a date not YYYY-MM-DD, is an error (a typo would silently keep the default date)."""
    dates = {}
    for pair in pairs:
        name, _, date = pair.partition("=")
        if name not in names:
            raise SystemExit(f"--log-date {pair}: {name!r} is not one of the logs given")
        if not re.fullmatch(r"\d{4}-\d\d-\d\d", date):
            raise SystemExit(f"--log-date {pair}: the date must be YYYY-MM-DD")
        dates[name] = date
    return dates


def recorded_logs(previous: dict) -> set[str]:
    """The log names of every run in a record, shipped or not."""
    return {entry["log"] for entry in [*previous.get("runs", []), *previous.get("not_adopted", [])]}


def appended(previous: dict, runs: list[dict], not_adopted: list[dict]) -> tuple[list[dict], list[dict]]:
    """The runs and not-adopted runs of an earlier record followed by the new ones; a log already
    recorded is an error (appending twice would count its minutes twice)."""
    old_runs, old_not_adopted = previous.get("runs", []), previous.get("not_adopted", [])
    recorded = recorded_logs(previous)
    for entry in [*runs, *not_adopted]:
        if entry["log"] in recorded:
            raise SystemExit(f"{entry['log']} is already recorded in the training record")
    return old_runs + runs, old_not_adopted + not_adopted


def adopted(previous: dict, names: list[str], branches: bool = False) -> dict:
    """`previous` with the not-adopted runs `names` moved, in that order, to the end of its runs: their
    weights are now the shipped ones. Each must have started from the one before it, and the first
    from the shipped folder, or the runs would not be the shipped weights' lineage. With `branches`
    (the runs of a soup that ships, --adopt-soup) each may also have started from the shipped folder:
    runs trained apart from the same weights, whose mean is the new shipped weights (runs 56-57); a
    run alone cannot be adopted that way, since only its own branch would then be shipped."""
    not_adopted = {entry["log"]: entry for entry in previous.get("not_adopted", [])}
    shipped = started_from = "scenes_model"  # the shipped folder, tokentrim_cli/scenes_model
    for name in names:
        if name not in not_adopted:
            raise SystemExit(f"--adopt {name}: not a recorded not-adopted run")
        init = not_adopted[name]["arguments"].get("init", "None")  # a run's --out folder is named like its log
        allowed = {started_from, shipped} if branches else {started_from}
        if Path(init).name not in allowed:
            raise SystemExit(f"--adopt {name}: it started from {init}, not from {' or '.join(sorted(allowed))}")
        started_from = name.removesuffix(".log")
    moved = [not_adopted[name] for name in names]
    return previous | {
        "runs": [*previous.get("runs", []), *moved],
        "not_adopted": [entry for entry in previous.get("not_adopted", []) if entry["log"] not in names],
    }


def soup_entry(spec: str, rank: int | None, date: str, previous: dict) -> dict:
    """The record of `NAME=A.log,B.log,...`: a uniform soup of runs already in the record (a soup of
    weights nobody can rebuild would be no record), named once."""
    name, _, logs = spec.partition("=")
    parts = [log for log in logs.split(",") if log]
    if not name or len(parts) < 2:
        raise SystemExit(f"--soup {spec}: give NAME=A.log,B.log (two or more recorded runs)")
    recorded = recorded_logs(previous)
    for log in parts:
        if log not in recorded:
            raise SystemExit(f"--soup {spec}: {log} is not a recorded run")
    if name in {soup["name"] for soup in previous.get("soups", [])}:
        raise SystemExit(f"--soup {spec}: {name} is already recorded")
    folders = " ".join(f"runs/{log.removesuffix('.log')}" for log in parts)
    rank_flag = f" --rank {rank}" if rank else ""
    return {"name": name, "of": parts, "rank": rank, "date": date,
            "command": f"python scripts/interpolate_trained.py {folders} --mean{rank_flag} --out runs/{name}"}  # fmt: skip


def soup_adopted(previous: dict, name: str) -> dict:
    """`previous` with the recorded soup `name` marked as the shipped weights (and no other soup): the
    runs it is the mean of must be the shipped weights' runs, or the record would not rebuild them."""
    soups = previous.get("soups", [])
    soup = next((entry for entry in soups if entry["name"] == name), None)
    if soup is None:
        raise SystemExit(f"--adopt-soup {name}: not a recorded soup")
    shipped_runs = [run["log"] for run in previous.get("runs", [])]
    for log in soup["of"]:
        if log not in shipped_runs:
            raise SystemExit(f"--adopt-soup {name}: {log} is not among the shipped weights' runs (--adopt it)")
    # The record says the shipped soup's runs are the last entries of "runs" (its note, and the
    # package test that reads it); a soup of older runs would leave later runs in the lineage
    # that the shipped weights do not contain.
    last = shipped_runs[-len(soup["of"]):]
    if sorted(last) != sorted(soup["of"]):
        raise SystemExit(f"--adopt-soup {name}: its runs must be the last of the shipped weights' runs "
                         f"(the last {len(last)} are {', '.join(last)})")  # fmt: skip
    return previous | {"soups": [entry | {"shipped": entry["name"] == name} for entry in soups]}


def versions() -> dict:
    import peft
    import torch
    import transformers

    from tokentrim_cli.metrics import cpu_model

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads()}  # fmt: skip


def record(previous: dict, runs: list[dict], not_adopted: list[dict], environment: dict) -> dict:
    """The training record: the new entries, each with this environment's versions, after an earlier
    record's (`previous`, empty unless appending), whose top-level versions are kept: they describe the
    runs recorded before entries carried their own, and rewriting them would date those runs wrongly."""
    runs = [entry | {"versions": environment} for entry in runs]
    not_adopted = [entry | {"versions": environment} for entry in not_adopted]
    runs, not_adopted = appended(previous, runs, not_adopted)
    if not runs:
        raise SystemExit("no runs: give the logs of the runs that produced the shipped weights (or --append)")
    document = {
        "model": "builtin:scenes",
        "script": "scripts/train_scenes_model.py",
        "runs": runs,
        "total_minutes": round(sum(run["minutes"] for run in runs), 1),
        "versions": previous.get("versions", environment),
        "note": ("Runs are listed oldest first; a run with --init continued from the weights it names: the previous "
                 "run's, or tokentrim_cli/scenes_model, the weights shipped on its day (a shipped soup's, soups). "
                 "An entry's own versions are its environment's; the top-level versions are those of the "
                 "entries without their own."),
    }  # fmt: skip
    if previous.get("soups"):
        document["soups"] = previous["soups"]
        document["soups_note"] = ("Uniform soups of recorded runs' weights (scripts/interpolate_trained.py --mean): "
                                  "nothing trained, so no minutes. The one marked shipped is the shipped weights, "
                                  "the mean of its runs, which are the last entries of \"runs\".")  # fmt: skip
    if not_adopted:
        document["not_adopted"] = not_adopted
        document["not_adopted_note"] = ("Runs compared on held-out pictures (scripts/compare_trained.py) and not "
                                        "shipped; their weights are not in the package. See the model card.")  # fmt: skip
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", type=Path, nargs="*", help="logs of the runs that produced the shipped weights")
    parser.add_argument("--date", help="the day the runs started (YYYY-MM-DD); needed with logs")
    parser.add_argument("--log-date", action="append", default=[], metavar="LOG=DATE",
                        help="a log (by file name) that started on another day than --date; repeatable")
    parser.add_argument("--not-adopted", type=Path, nargs="*", default=[], help="logs of runs whose weights were not shipped")
    parser.add_argument("--output", type=Path, default=Path("tokentrim_cli/scenes_model/training.json"))
    parser.add_argument("--append", action="store_true", help="keep the runs already in --output and add these after them")
    parser.add_argument("--adopt", nargs="+", default=[], metavar="LOG",
                        help="with --append: recorded not-adopted runs (log names) whose weights now ship, oldest first")
    parser.add_argument("--soup", metavar="NAME=A.log,B.log",
                        help="with --append: record a uniform soup of recorded runs (interpolate_trained.py --mean)")
    parser.add_argument("--soup-rank", type=int, help="the --rank the soup was written at")
    parser.add_argument("--adopt-soup", metavar="NAME", help="with --append: the recorded soup whose weights now ship")
    args = parser.parse_args()
    if (args.logs or args.not_adopted or args.soup) and not args.date:
        parser.error("--date is needed with logs and --soup")
    if (args.soup or args.adopt_soup) and not args.append:
        parser.error("--soup and --adopt-soup read the record in --output: give --append")
    if args.soup_rank is not None and not args.soup:
        parser.error("--soup-rank is the rank of the soup given with --soup: give --soup")
    if args.adopt and not args.append:
        parser.error("--adopt moves runs of the record in --output: give --append")
    dates = log_dates(args.log_date, [log.name for log in [*args.logs, *args.not_adopted]])

    def entries(logs: list[Path]) -> list[dict]:
        return [parse(log) | {"date": dates.get(log.name, args.date)} for log in logs]

    previous = json.loads(args.output.read_text(encoding="utf-8")) if args.append else {}
    previous = adopted(previous, args.adopt, branches=bool(args.adopt_soup)) if args.adopt else previous
    if args.soup:
        soup = soup_entry(args.soup, args.soup_rank, args.date, previous)
        previous = previous | {"soups": [*previous.get("soups", []), soup]}
    if args.adopt_soup:
        previous = soup_adopted(previous, args.adopt_soup)
    document = record(previous, entries(args.logs), entries(args.not_adopted), versions())
    args.output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output} ({len(document['runs'])} runs, {document['total_minutes']:.0f} minutes)", file=sys.stderr)


if __name__ == "__main__":
    main()
