"""team_server: a team's tracking server, `mlflow server` on PostgreSQL with basic-auth.

start    initialises a PostgreSQL cluster in <dir>/postgres once (initdb), starts it (pg_ctl),
         creates the databases `mlflow`, `mlflow_auth` and `optuna`, then starts `mlflow server`
         on them with proxied artifacts in <dir>/artifacts and MLflow's basic-auth app.
         A second start reuses the cluster, the databases and the passwords.
stop     stops `mlflow server`, then PostgreSQL.
status   says what runs, and prints the settings a client exports.
add-user creates a tracking-server user (its password from stdin, or asked for).

The passwords are made at the first start and kept in <dir>/secrets (mode 700), never in the
repository. The work is done by mnist_pipeline/tracking/team_server.py.

$ python team_server.py start --dir ./team-server
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from mnist_pipeline.cli import Parser, fail
from mnist_pipeline.errors import UserError
from mnist_pipeline.tracking import signals
from mnist_pipeline.tracking.team_server import TeamServer

# Flag, type, default, help; each also comes from the environment (TEAM_SERVER_DB_PORT...).
SETTINGS = [
    ("--dir", Path, "team-server", "the server's folder: database, artifacts, secrets, logs"),
    ("--host", str, "127.0.0.1", "address that mlflow server and PostgreSQL listen on; "
     "0.0.0.0 for other machines"),
    ("--port", int, "5005", "mlflow server's port"),
    ("--db-port", int, "5433", "PostgreSQL's port, beside a system PostgreSQL on 5432"),
    ("--workers", int, "4", "mlflow server's worker processes"),
    ("--allowed-hosts", str, "", "the names or addresses that clients use, with their port "
     "(host:*), if not localhost or a private IP (mlflow server's flag)"),
]  # fmt: skip


def build_parser() -> Parser:
    parser = Parser(prog="team_server.py", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("start", "stop", "status", "add-user"))
    parser.add_argument("username", nargs="?", help="for add-user: the new user's name")
    for flag, kind, default, what in SETTINGS:
        variable = "TEAM_SERVER_" + flag.removeprefix("--").replace("-", "_").upper()
        # argparse converts a default string as it does the flag's value, with its one-line error.
        default = os.environ.get(variable, default)
        parser.add_argument(flag, type=kind, default=default, help=f"{what} (env {variable})")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    signals.install()  # SIGTERM, like Ctrl-C, stops a half-started server.
    # A running server keeps the address it started on, whatever the flags say now.
    server = TeamServer(args.dir, args.host, args.port, args.db_port).as_started()
    try:
        if args.command == "start":
            server.start(args.workers, args.allowed_hosts)
        elif args.command == "stop":
            server.stop()
            return 0
        elif args.command == "status":
            database, pid = server.postgres_running(), server.server_pid()
            print(f"PostgreSQL: {f'running on port {server.db_port}' if database else 'stopped'}; "
                  f"mlflow server: {f'running at {server.url}' if pid else 'stopped'}",
                  file=sys.stderr)  # fmt: skip
            if not (database and pid):
                return 3
        else:
            if not args.username:
                raise UserError("add-user needs a user name: team_server.py add-user NAME")
            server.add_user(args.username, read_new_password())
            print(f"Created user {args.username!r} on {server.url}", file=sys.stderr)
            return 0
    except UserError as error:
        return fail(parser.prog, error)
    print(server.client_settings())
    return 0


def read_new_password() -> str:
    if sys.stdin.isatty():
        password = getpass.getpass("New user's password: ")
        if getpass.getpass("Again: ") != password:
            raise UserError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 12:
        raise UserError("choose a password of at least 12 characters (MLflow's rule)")
    return password


if __name__ == "__main__":
    sys.exit(main())
