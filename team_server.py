"""team_server: a team's tracking server, `mlflow server` on PostgreSQL with basic-auth.

start    initialises a PostgreSQL cluster in <dir>/postgres once (initdb), starts it (pg_ctl),
         creates the databases `mlflow`, `mlflow_auth` and `optuna`, then starts `mlflow server`
         on them with proxied artifacts in <dir>/artifacts and MLflow's basic-auth app.
         A second start reuses the cluster, the databases and the passwords.
stop     stops `mlflow server`, then PostgreSQL.
status   says what runs, and prints the settings a client exports.
add-user creates a tracking-server user (its password from stdin, or asked for).

The passwords are made at the first start and kept in <dir>/secrets (mode 700), never in the
repository. PostgreSQL refuses to run as root: as root, its commands run as the `postgres` user
that the OS package creates.

$ python team_server.py start --dir ./team-server
"""

from __future__ import annotations

import functools
import getpass
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from mnist_pipeline.cli import Parser
from mnist_pipeline.errors import UserError

DATABASES = {"mlflow": "mlflow", "mlflow_auth": "mlflow", "optuna": "optuna"}  # name: owner role
ROLES = ("mlflow", "optuna")
ADMIN_USERNAME = "admin"


def build_parser() -> Parser:
    parser = Parser(prog="team_server.py", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("start", "stop", "status", "add-user"))
    parser.add_argument("username", nargs="?", help="for add-user: the new user's name")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(os.environ.get("TEAM_SERVER_DIR", "team-server")),
        help="the server's folder: database, artifacts, secrets, logs (env TEAM_SERVER_DIR)",
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("TEAM_SERVER_HOST", "127.0.0.1"),
        help="address that mlflow server and PostgreSQL listen on; 0.0.0.0 for other machines",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("TEAM_SERVER_PORT", "5005")),
        help="mlflow server's port",
    )
    parser.add_argument(
        "--db-port",
        type=int,
        default=int(os.environ.get("TEAM_SERVER_DB_PORT", "5433")),
        help="PostgreSQL's port (5433, beside a system PostgreSQL on 5432)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("TEAM_SERVER_WORKERS", "4")),
        help="mlflow server's worker processes",
    )
    parser.add_argument(
        "--allowed-hosts",
        default="",
        help="host names that clients use, if not localhost or a private IP (mlflow server's flag)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    server = TeamServer(args.dir, args.host, args.port, args.db_port)
    try:
        if args.command == "start":
            server.start(args.workers, args.allowed_hosts)
            print(server.client_settings())
        elif args.command == "stop":
            server.stop()
        elif args.command == "status":
            running = server.status()
            if running:
                print(server.client_settings())
            return 0 if running else 3
        else:
            if not args.username:
                raise UserError("add-user needs a user name: team_server.py add-user NAME")
            server.add_user(args.username, _read_new_password())
    except UserError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    return 0


def _read_new_password() -> str:
    if sys.stdin.isatty():
        password = getpass.getpass("New user's password: ")
        if getpass.getpass("Again: ") != password:
            raise UserError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 12:
        raise UserError("choose a password of at least 12 characters (MLflow's rule)")
    return password


class TeamServer:
    """PostgreSQL and `mlflow server` living in one folder, `folder`."""

    def __init__(self, folder: Path, host: str, port: int, db_port: int):
        self.folder = folder.resolve()
        self.host, self.port, self.db_port = host, port, db_port
        self.pgdata = self.folder / "postgres"
        self.secrets = self.folder / "secrets"
        self.pid_file = self.folder / "mlflow-server.pid"
        self.log = self.folder / "mlflow-server.log"

    # ------------------------------------------------------------------ commands

    def start(self, workers: int, allowed_hosts: str = "") -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._start_postgres()
        if self._server_pid() is not None:
            print(f"mlflow server already runs at {self.url}", file=sys.stderr)
            return
        (self.folder / "artifacts").mkdir(exist_ok=True)
        auth_config = self.folder / "basic_auth.ini"
        auth_config.write_text(
            "[mlflow]\n"
            # Team members may read and write every experiment; `add-user` and the
            # permission API narrow this down where a team needs it.
            "default_permission = EDIT\n"
            f"database_uri = {self._database_url('mlflow_auth')}\n"
            f"admin_username = {ADMIN_USERNAME}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # Checking a password costs a PBKDF2 hash: cache it for a minute per worker.
            "auth_cache_ttl_seconds = 60\n"
        )
        auth_config.chmod(0o600)
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--artifacts-destination", str(self.folder / "artifacts"),
            "--app-name", "basic-auth",
            "--host", self.host, "--port", str(self.port), "--workers", str(workers),
        ]  # fmt: skip
        if allowed_hosts:
            command += ["--allowed-hosts", allowed_hosts]
        environment = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            # Through the environment, so that the database password is not shown by `ps`.
            "MLFLOW_BACKEND_STORE_URI": self._database_url("mlflow"),
            "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self._secret("flask_secret_key"),
            "MLFLOW_AUTH_ADMIN_PASSWORD": self._secret("admin_password"),
            # MLflow's job runner serves GenAI evaluations and trace roll-ups: seven more
            # processes that training runs never use. Set it to true to have them.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get(
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"
            ),
        }
        print(f"Starting mlflow server at {self.url} (log: {self.log})", file=sys.stderr)
        with open(self.log, "ab") as log:
            process = subprocess.Popen(
                command, env=environment, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self.pid_file.write_text(str(process.pid))
        self._wait_until_healthy(process)

    def stop(self) -> None:
        pid = self._server_pid()
        if pid is not None:
            _stop_process_group(pid)
            print(f"Stopped mlflow server (pid {pid})", file=sys.stderr)
        self.pid_file.unlink(missing_ok=True)
        if self._postgres_running():
            self._as_db_owner([self._bin("pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "stop"])
            print("Stopped PostgreSQL", file=sys.stderr)

    def status(self) -> bool:
        database = self._postgres_running()
        pid = self._server_pid()
        print(
            f"PostgreSQL: {'running on port ' + str(self.db_port) if database else 'stopped'}; "
            f"mlflow server: {'running at ' + self.url if pid else 'stopped'}",
            file=sys.stderr,
        )
        return database and pid is not None

    def add_user(self, username: str, password: str) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.server import get_app_client

        if self._server_pid() is None:
            raise UserError(f"the team server in {self.folder} is not running; start it first")
        os.environ["MLFLOW_TRACKING_USERNAME"] = ADMIN_USERNAME
        os.environ["MLFLOW_TRACKING_PASSWORD"] = self._secret("admin_password")
        client = get_app_client("basic-auth", tracking_uri=self.url)
        try:
            client.create_user(username=username, password=password)
        except MlflowException as error:
            raise UserError(f"cannot create user {username!r}: {error.message}") from None
        print(f"Created user {username!r} on {self.url}", file=sys.stderr)

    def client_settings(self) -> str:
        """The lines a team member exports (with their own user and password)."""
        return "\n".join(
            [
                f"export MLFLOW_TRACKING_URI={self.url}",
                f"export MLFLOW_TRACKING_USERNAME={ADMIN_USERNAME}",
                f"export MLFLOW_TRACKING_PASSWORD=$(cat {self.secrets / 'admin_password'})",
                "export OPTUNA_STORAGE=postgresql://optuna:"
                f"$(cat {self.secrets / 'optuna_password'})@{self.local_host}:{self.db_port}/optuna",
            ]
        )

    @property
    def local_host(self) -> str:
        """The address a client on this machine uses: 127.0.0.1 when we listen on all of them."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host

    @property
    def url(self) -> str:
        return f"http://{self.local_host}:{self.port}"

    # ------------------------------------------------------------------ PostgreSQL

    def _start_postgres(self) -> None:
        if not (self.pgdata / "PG_VERSION").exists():
            self._init_cluster()
        if not self._postgres_running():
            # The socket lives in the data folder, which only the database's owner can enter.
            options = f"-p {self.db_port} -c listen_addresses={self.host} -k {self.pgdata}"
            self._as_db_owner(
                [self._bin("pg_ctl"), "-D", str(self.pgdata), "-l", str(self.pgdata / "server.log"),
                 "-o", options, "-w", "-t", "60", "start"]
            )  # fmt: skip
            print(f"Started PostgreSQL on {self.host}:{self.db_port}", file=sys.stderr)
        for role in ROLES:
            password = self._secret(f"{role}_password")
            exists = self._sql(f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'")
            verb = "ALTER" if exists else "CREATE"
            self._sql(f"{verb} ROLE {role} LOGIN PASSWORD '{password}'")
        for database, owner in DATABASES.items():
            if not self._sql(f"SELECT 1 FROM pg_database WHERE datname = '{database}'"):
                self._sql(f"CREATE DATABASE {database} OWNER {owner}")

    def _init_cluster(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.pgdata, "postgres", "postgres")
            probe = subprocess.run(
                ["runuser", "-u", "postgres", "--", "test", "-w", str(self.pgdata)]
            )
            if probe.returncode != 0:
                raise UserError(
                    f"the postgres user cannot write to {self.pgdata}; "
                    "choose a --dir whose parent folders others may enter (chmod o+x)"
                )
        self.pgdata.chmod(0o700)
        print(f"Initialising a PostgreSQL cluster in {self.pgdata}", file=sys.stderr)
        self._as_db_owner(
            [self._bin("initdb"), "-D", str(self.pgdata), "--auth-local=peer",
             "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C"]
        )  # fmt: skip
        # Other machines connect with a password (Optuna's storage, for one); whether they
        # can reach the server at all is decided by --host.
        with open(self.pgdata / "pg_hba.conf", "a") as rules:
            rules.write("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")

    def _postgres_running(self) -> bool:
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        status = self._as_db_owner(
            [self._bin("pg_ctl"), "-D", str(self.pgdata), "status"], check=False
        )
        return status.returncode == 0

    def _sql(self, statement: str) -> str:
        result = self._as_db_owner(
            [self._bin("psql"), "-h", str(self.pgdata), "-p", str(self.db_port), "-d", "postgres",
             "-v", "ON_ERROR_STOP=1", "-tAc", statement]
        )  # fmt: skip
        return result.stdout.strip()

    def _as_db_owner(self, command: list[str], check: bool = True) -> subprocess.CompletedProcess:
        """Run a PostgreSQL command as the cluster's owner: `postgres` when we are root."""
        program = Path(command[0]).name
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd="/")
        if check and result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            raise UserError(f"{program} failed: {lines[-1] if lines else result.returncode}")
        return result

    @staticmethod
    @functools.cache
    def _bin(name: str) -> str:
        """The path of a PostgreSQL program, which Debian keeps off PATH."""
        candidates = []
        pg_config = shutil.which("pg_config")
        if pg_config:
            found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
            candidates.append(Path(found.stdout.strip()))
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key)
        candidates += reversed(versions)
        for folder in candidates:
            if (folder / name).exists():
                return str(folder / name)
        on_path = shutil.which(name)
        if on_path:
            return on_path
        raise UserError(
            f"PostgreSQL's {name} is not installed: apt-get install postgresql "
            "(Debian, Ubuntu) or brew install postgresql@16 (macOS)"
        )

    def _database_url(self, database: str) -> str:
        owner = DATABASES[database]
        password = self._secret(f"{owner}_password")
        return f"postgresql://{owner}:{password}@{self.local_host}:{self.db_port}/{database}"

    # ------------------------------------------------------------------ mlflow server

    def _secret(self, name: str) -> str:
        """Read a secret of this server, making it at the first start."""
        self.secrets.mkdir(parents=True, exist_ok=True)
        self.secrets.chmod(0o700)
        path = self.secrets / name
        if not path.exists():
            temporary = path.with_suffix(".tmp")
            temporary.write_text(secrets.token_urlsafe(24))
            temporary.chmod(0o600)
            os.replace(temporary, path)
        return path.read_text().strip()

    def _server_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        return pid

    def _wait_until_healthy(self, process: subprocess.Popen, timeout: float = 180) -> None:
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                tail = self.log.read_text(errors="replace").strip().splitlines()[-1:]
                raise UserError(
                    f"mlflow server exited with {process.returncode}: {tail} (see {self.log})"
                )
            try:
                with direct.open(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        print(f"mlflow server is up at {self.url}", file=sys.stderr)
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        _stop_process_group(process.pid)
        raise UserError(f"mlflow server did not answer within {timeout:.0f} s (see {self.log})")


def _stop_process_group(pid: int, timeout: float = 20) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _version_key(path: Path) -> tuple:
    try:
        return (float(path.parent.name),)
    except ValueError:
        return (0.0,)


if __name__ == "__main__":
    sys.exit(main())
