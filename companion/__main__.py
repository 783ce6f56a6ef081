"""Command line: `python -m companion run|sweep|data|env|runtimes|student` (see the README)."""

from __future__ import annotations

import argparse
import json
import sys

from .course import editions, tables
from .store import DATASETS, available_datasets, fetch

# The notebook runner loads torch, scipy and papermill: only the subcommands that run notebooks import it
# (`_runner`), so `--help`, `data`, `student` and `runtimes` answer in well under a second;
# `env` imports torch too.


def _runner():
    """The notebook runner and its summary table, imported when a subcommand runs notebooks."""
    from .course import runner, summary

    return runner, summary


def _params(pairs: list[list[str]] | None) -> dict:
    """NAME VALUE pairs from the command line, values parsed as Python literals ("[1, 3]" is a list)."""
    out: dict = {}
    for name, value in pairs or []:
        if name in out:
            raise ValueError(f"parameter {name} is given twice (-p {name} ...); give each parameter once")
        out[name] = _runner()[0].parse_value(value)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the course's command line."""
    parser = argparse.ArgumentParser(prog="python -m companion", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute notebooks with papermill and print their claims table")
    run.add_argument(
        "notebooks",
        nargs="*",
        help="notebook files or number prefixes (default: all; prefixes are "
        "looked up in $COMPANION_NOTEBOOKS, else the checkout's notebooks/)",
    )
    run.add_argument(
        "--scale",
        default="auto",
        choices=["quick", "full", "auto"],
        help="quick: CPU minutes; full: more data, epochs and seeds for a GPU; auto (default): full on a GPU",
    )
    run.add_argument("--out", default="build", help="folder for executed notebooks and results files")
    run.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="set a notebook parameter (repeatable), e.g. -p SEED 3 -p SIZES '[1, 5]'",
    )
    run.add_argument("--inplace", action="store_true", help="execute the committed notebooks in place")
    run.add_argument(
        "--force",
        action="store_true",
        help="with --inplace: run a notebook even if it has uncommitted edits (its old version is kept as .prev)",
    )

    sweep = sub.add_parser("sweep", help="run one notebook once per value of one parameter")
    sweep.add_argument("notebook")
    sweep.add_argument(
        "-p",
        "--param",
        nargs="+",
        required=True,
        action="append",
        metavar="NAME V1",
        help="NAME V1 V2 ...: the one parameter to sweep (given once)",
    )
    sweep.add_argument(
        "--set",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="fix another parameter for every run of the sweep",
    )
    sweep.add_argument(
        "--scale", default="auto", choices=["quick", "full", "auto"], help="as for run: quick, full or auto"
    )
    sweep.add_argument("--out", default="build", help="folder for executed notebooks and results files")

    data = sub.add_parser(
        "data",
        help="datasets: list what is present, or fetch the rest",
        description=f"The course's datasets: {', '.join(DATASETS)}.",
    )
    data.add_argument(
        "action", choices=["fetch", "list"], help="list: present / missing / corrupt; fetch: get or repair"
    )
    data.add_argument("names", nargs="*", help=f"datasets to fetch (default: all): {', '.join(DATASETS)}")
    data.add_argument("--mirror", default=None, help="local mirror folder (default: $COMPANION_DATA_MIRROR)")

    sub.add_parser("env", help="print the environment report: versions, device, datasets present")
    sub.add_parser(
        "runtimes",
        help="write measured runtimes (notebooks/runtimes.json) into headers, the README and "
        "docs/teaching.md",
    )

    student = sub.add_parser(
        "student",
        help="write the student edition of the notebooks (solutions removed, "
        "exercise outputs cleared) into OUT_DIR",
    )
    student.add_argument(
        "out_dir", metavar="OUT_DIR", help="folder to write into (not the committed notebooks' folder)"
    )
    student.add_argument(
        "notebooks", nargs="*", help="notebook files or number prefixes (default: all, in course order)"
    )
    student.add_argument(
        "--force", action="store_true", help="overwrite notebooks in OUT_DIR even if they were edited"
    )
    student.add_argument(
        "--instructor",
        action="store_true",
        help="copy the instructor edition (the committed notebooks, with solutions) instead",
    )

    args = parser.parse_args(argv)
    try:
        return _dispatch(parser, args)
    except ValueError as err:  # bad names or parameters: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C: one line, no traceback
        print(f"error: interrupted (Ctrl-C){_notes(err)}", file=sys.stderr)
        return 130
    except OSError as err:  # a full disk, a quota, permissions: one line naming the file
        what = f"{err.strerror}: {err.filename}" if err.filename and err.strerror else (err.strerror or err)
        print(f"error: {what}{_notes(err)}", file=sys.stderr)
        return 1
    except Exception as err:
        if type(err).__name__ != "PapermillExecutionError":
            raise
        print(
            f"error: a notebook stopped in cell {err.exec_count}: {err.ename}: {err.evalue}{_notes(err)}",
            file=sys.stderr,
        )
        return 1


def _notes(err: BaseException) -> str:
    """The notes added to an exception (where a partial run is kept), on the same line."""
    notes = [" ".join(str(n).split()) for n in getattr(err, "__notes__", [])]
    return "".join(f"; {n}" for n in notes)


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command in ("run", "sweep"):
        course, summary = _runner()
    if args.command == "run":
        rows = course.run(
            args.notebooks,
            scale=args.scale,
            out=args.out,
            params=_params(args.param),
            inplace=args.inplace,
            force=args.force,
        )
    elif args.command == "sweep":
        if len(args.param) > 1:
            names = ", ".join(p[0] for p in args.param)
            parser.error(
                f"sweep takes one -p NAME V1 V2 ..., got {len(args.param)} ({names}); sweep one parameter "
                "per call and fix the others with --set NAME VALUE"
            )
        swept = args.param[0]
        if len(swept) < 2:
            parser.error("sweep -p needs a parameter name and at least one value")
        name, values = swept[0], [course.parse_value(v) for v in swept[1:]]
        rows = course.sweep(
            args.notebook, name, values, scale=args.scale, out=args.out, params=_params(args.set)
        )
    elif args.command == "data":
        if args.action == "fetch":
            fetch(args.names or None, mirror=args.mirror)
        else:
            for name, info in available_datasets(mirror=args.mirror).items():
                state = info["state"]
                if state == "corrupt":
                    files = ", ".join(info["damaged"])
                    note = f"damaged: {files}; repair: python -m companion data fetch {name}"
                else:
                    note = info["how"] if state == "missing" else ""
                print(f"{name:14} {state:8} {note}".rstrip())
        return 0
    elif args.command == "student":
        write = editions.write_instructor if args.instructor else editions.write_student
        for path in write(args.out_dir, args.notebooks or None, force=args.force):
            found = editions.exercises(json.loads(path.read_text()))
            code = sum("(code)" in title for title in found)
            print(f"{path}: {code} code exercise(s), {len(found) - code} question(s)")
        return 0
    elif args.command == "runtimes":
        changed = tables.sync_runtimes()
        print(
            "updated: " + ", ".join(changed)
            if changed
            else "headers, README and docs/teaching.md already match the measured runtimes"
        )
        return 0
    else:
        from .device import env_report  # loads torch

        print(json.dumps(env_report(), indent=2))
        return 0
    print(summary.table(rows))
    return 0 if sum(r["failures"] for r in rows) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
