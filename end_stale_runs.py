"""end_stale_runs: end as KILLED the runs left RUNNING by processes that were killed (SIGKILL).

SIGINT and SIGTERM end a stage's runs as KILLED; SIGKILL (or a power cut) gives it no
chance, and its runs stay RUNNING. Every run names the process responsible for it (tag
`process`, `<host>:<pid>`): a RUNNING run whose process no longer exists on this machine is
stale, and `main` says so. Runs whose process is unknown (started elsewhere, or by another
tool) are only listed, unless `--all`.

$ python end_stale_runs.py              # --dry_run lists them without ending them
"""

from __future__ import annotations

import sys

from mnist_pipeline.cli import USER_ERRORS, Parser, fail


def build_parser() -> Parser:
    parser = Parser(prog="end_stale_runs.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry_run", action="store_true", help="list the stale runs, do not end them"
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="also end RUNNING runs whose process is unknown (be sure that none is alive)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import mlflow

    from mnist_pipeline.tracking import runs, stale_runs

    try:
        runs.check_tracking_server()
        stale, unknown = stale_runs.stale_runs()
    except USER_ERRORS as error:
        return fail(parser.prog, error)
    to_end = stale + unknown if args.all else stale
    client = mlflow.MlflowClient()
    for run in to_end:
        if not args.dry_run:
            client.set_terminated(run.info.run_id, "KILLED")
        print(f"{'stale' if args.dry_run else 'KILLED'}  {describe(run)}")
    if unknown and not args.all:
        for run in unknown:
            print(f"left RUNNING (process unknown)  {describe(run)}")
    verb = "would end" if args.dry_run else "ended"
    print(
        f"{verb} {len(to_end)} stale run{'' if len(to_end) == 1 else 's'} as KILLED"
        + (
            f"; {len(unknown)} RUNNING runs name no process here (--all ends them)"
            if unknown and not args.all
            else ""
        ),
        file=sys.stderr,
    )
    return 0


def describe(run) -> str:
    tags = run.data.tags
    stage = tags.get("stage", "?")
    return f"{run.info.run_id}  {stage:<12} {tags.get('mlflow.runName', '')}  process {tags.get('process', '?')}"


if __name__ == "__main__":
    sys.exit(main())
