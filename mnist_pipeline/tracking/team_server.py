"""The team's tracking server: PostgreSQL and `mlflow server` with basic-auth, in one folder.

<folder>/postgres   the PostgreSQL cluster: made once by initdb, started and stopped by pg_ctl
<folder>/secrets    the passwords, made at the first start (mode 700)
<folder>/artifacts  the artifacts that clients up- and download through the server

PostgreSQL refuses to run as root: as root, its programs run as the `postgres` user that
the OS package creates. MLflow and Optuna each keep an `alembic_version` table, so they get
databases of their own.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

from mnist_pipeline.errors import UserError

ADMIN_USERNAME = "admin"
# Where PostgreSQL's programs live when they are not on PATH: Debian keeps them in
# /usr/lib/postgresql/<version>/bin, Homebrew's postgresql@<version> is keg-only.
PROGRAM_FOLDERS = ("usr/lib/postgresql/*/bin", "opt/homebrew/opt/postgresql@*/bin",
                   "usr/local/opt/postgresql@*/bin")  # fmt: skip
# The roles and databases, made where missing (psql's \gexec runs the statements that the
# SELECT returns) at every start. psql quotes the passwords, its variables :'mlflow_password'
# and :'optuna_password', which come on its command line.
SETUP_SQL = r"""
SELECT format('CREATE ROLE %I', name) FROM unnest(ARRAY['mlflow', 'optuna']) AS name
WHERE name NOT IN (SELECT rolname FROM pg_roles) \gexec
ALTER ROLE mlflow LOGIN PASSWORD :'mlflow_password';
ALTER ROLE optuna LOGIN PASSWORD :'optuna_password';
SELECT format('CREATE DATABASE %I OWNER %I', name, owner)
FROM (VALUES ('mlflow', 'mlflow'), ('mlflow_auth', 'mlflow'), ('optuna', 'optuna')) AS wanted (name, owner)
WHERE name NOT IN (SELECT datname FROM pg_database) \gexec
"""
# Team members may read and write every experiment; `add-user` and MLflow's permission API
# narrow this down where a team needs it. Checking a password costs a PBKDF2 hash: it is
# cached for a minute per worker.
AUTH_CONFIG = """[mlflow]
default_permission = EDIT
database_uri = {database_uri}
admin_username = {admin_username}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
"""


class TeamServer:
    """PostgreSQL and `mlflow server` living in `folder`, listening on `host`."""

    def __init__(
        self, folder: Path, host: str = "127.0.0.1", port: int = 5005, db_port: int = 5433
    ):
        self.folder = folder.resolve()
        self.host, self.port, self.db_port = host, port, db_port
        self.pgdata = self.folder / "postgres"
        self.pid_file = self.folder / "mlflow-server.pid"
        self.log = self.folder / "mlflow-server.log"

    @property
    def local_host(self) -> str:
        """The address a client on this machine uses: 127.0.0.1 when we listen on all of them."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host

    @property
    def url(self) -> str:
        return f"http://{self.local_host}:{self.port}"

    def start(self, workers: int = 4, allowed_hosts: str = "") -> None:
        """Start PostgreSQL (initialising it the first time), then `mlflow server` on it."""
        # Another program on a port would answer in our place: a server that seems to start.
        if not self.postgres_running():
            self._check_port_free(self.db_port, "--db-port")
        if self.server_pid() is None:
            self._check_port_free(self.port, "--port")
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.pgdata / "PG_VERSION").exists():
            self._init_cluster()
        if not self.postgres_running():
            # The socket lives in the data folder, which only the database's owner can enter.
            options = f"-p {self.db_port} -c listen_addresses={self.host} -k {self.pgdata}"
            log = self.pgdata / "server.log"
            try:
                self._postgres("pg_ctl", "start", "-w", "-D", self.pgdata, "-l", log, "-o", options)
            except UserError as error:
                raise UserError(f"{error} (see {log})") from None
            print(f"Started PostgreSQL on {self.host}:{self.db_port}", file=sys.stderr)
        self._postgres(
            "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.pgdata, "-p", self.db_port,
            "-d", "postgres", "-v", f"mlflow_password={self.secret('mlflow_password')}",
            "-v", f"optuna_password={self.secret('optuna_password')}", input=SETUP_SQL,
        )  # fmt: skip
        if self.server_pid() is not None:
            where = f"{self.url} (stop it first to change its address)"
            print(f"mlflow server already runs at {where}", file=sys.stderr)
            return
        (self.folder / "artifacts").mkdir(exist_ok=True)
        auth_config = self.folder / "basic_auth.ini"
        auth_config.touch(mode=0o600)
        auth_config.write_text(
            AUTH_CONFIG.format(
                database_uri=self.database_url("mlflow_auth"), admin_username=ADMIN_USERNAME
            )
        )
        command = [
            sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
            "--artifacts-destination", str(self.folder / "artifacts"),
            "--host", self.host, "--port", str(self.port), "--workers", str(workers),
        ]  # fmt: skip
        if allowed_hosts:  # which replace MLflow's own list: this machine's names stay in
            command += ["--allowed-hosts", f"{allowed_hosts},localhost:*,127.0.0.1:*"]
        environment = {
            # MLflow's job runner serves GenAI evaluations and trace roll-ups: seven more
            # processes that training runs never use. Set it to true to have them.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            # Through the environment, so that `ps` does not show the database's password.
            "MLFLOW_BACKEND_STORE_URI": self.database_url("mlflow"),
            "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret("flask_secret_key"),
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.secret("admin_password"),
        }
        print(f"Starting mlflow server at {self.url} (log: {self.log})", file=sys.stderr)
        with open(self.log, "ab") as log:
            process = subprocess.Popen(
                command, env=environment, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        # With the address, so that later commands find a server started on other ports.
        self.pid_file.write_text(f"{process.pid} {self.host} {self.port} {self.db_port}")
        try:
            self._wait_until_healthy(process)
        except BaseException:  # It failed, or Ctrl-C: leave no half-started server behind.
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
            self.pid_file.unlink(missing_ok=True)
            raise
        print(f"mlflow server is up at {self.url}", file=sys.stderr)

    def stop(self) -> None:
        """Stop `mlflow server`, then PostgreSQL."""
        pid, database = self.server_pid(), self.postgres_running()
        if pid is not None:
            stop_process_group(pid)
            print(f"Stopped mlflow server (pid {pid})", file=sys.stderr)
        self.pid_file.unlink(missing_ok=True)
        if database:
            self._postgres("pg_ctl", "stop", "-D", self.pgdata)
            print("Stopped PostgreSQL", file=sys.stderr)
        if pid is None and not database:
            print(f"Nothing to stop: no team server runs in {self.folder}", file=sys.stderr)

    def add_user(self, username: str, password: str) -> None:
        """Create a tracking-server user, as the admin."""
        from mlflow.exceptions import MlflowException
        from mlflow.server import get_app_client

        if self.server_pid() is None:
            raise UserError(f"the team server in {self.folder} is not running; start it first")
        os.environ["MLFLOW_TRACKING_USERNAME"] = ADMIN_USERNAME
        os.environ["MLFLOW_TRACKING_PASSWORD"] = self.secret("admin_password")
        with warnings.catch_warnings():  # MLflow's server modules warn about Starlette's
            warnings.simplefilter("ignore")
            client = get_app_client("basic-auth", tracking_uri=self.url)
        try:
            client.create_user(username=username, password=password)
        except MlflowException as error:
            if error.error_code == "RESOURCE_ALREADY_EXISTS":
                raise UserError(f"user {username!r} exists already") from None
            raise UserError(f"cannot create user {username!r}: {error.message}") from None

    def client_settings(self) -> str:
        """The lines a team member exports (with their own user and password)."""
        secrets_folder = self.folder / "secrets"
        return (
            f"export MLFLOW_TRACKING_URI={self.url}\n"
            f"export MLFLOW_TRACKING_USERNAME={ADMIN_USERNAME}\n"
            f"export MLFLOW_TRACKING_PASSWORD=$(cat {secrets_folder / 'admin_password'})\n"
            f"export OPTUNA_STORAGE=postgresql://optuna:$(cat {secrets_folder / 'optuna_password'})"
            f"@{self.local_host}:{self.db_port}/optuna"
        )

    def postgres_running(self) -> bool:
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        return self._postgres("pg_ctl", "status", "-D", self.pgdata, check=False).returncode == 0

    def server_pid(self) -> int | None:
        """The process ID of `mlflow server`, or None when it does not run."""
        fields = self._started()
        return int(fields[0]) if fields else None

    def as_started(self) -> TeamServer:
        """This server at the address that `start` gave it, while it runs; else as it is."""
        fields = self._started()
        if len(fields) != 4:
            return self
        return TeamServer(self.folder, fields[1], int(fields[2]), int(fields[3]))

    def _started(self) -> list[str]:
        """The PID file's fields (pid host port db_port) while its process runs, else []."""
        try:
            fields = self.pid_file.read_text().split()
            os.kill(int(fields[0]), 0)
        except (FileNotFoundError, ValueError, IndexError, ProcessLookupError):
            return []
        return fields

    def secret(self, name: str) -> str:
        """Read a secret of this server, making it at the first start."""
        folder = self.folder / "secrets"
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        path = folder / name
        if not path.exists():
            temporary = path.with_suffix(".tmp")
            temporary.touch(mode=0o600)
            temporary.write_text(secrets.token_urlsafe(24))
            os.replace(temporary, path)
        return path.read_text().strip()

    def database_url(self, database: str) -> str:
        role = "optuna" if database == "optuna" else "mlflow"
        password = self.secret(f"{role}_password")
        return f"postgresql://{role}:{password}@{self.local_host}:{self.db_port}/{database}"

    def _init_cluster(self) -> None:
        self.pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.pgdata, "postgres", "postgres")
        print(f"Initialising a PostgreSQL cluster in {self.pgdata}", file=sys.stderr)
        self._postgres("initdb", "-D", self.pgdata, "--auth-local=peer",
                       "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C")  # fmt: skip
        # Other machines connect with a password (Optuna's storage, for one); whether they
        # can reach the server at all is decided by --host.
        with open(self.pgdata / "pg_hba.conf", "a") as rules:
            rules.write("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")

    def _postgres(self, program: str, *arguments, check: bool = True, input: str | None = None):
        """Run a PostgreSQL program as the cluster's owner: `postgres` when we are root."""
        command = [postgres_program(program), *map(str, arguments)]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, input=input, cwd="/")
        if check and result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines() or [result.returncode]
            hint = ""
            if os.geteuid() == 0 and "Permission denied" in str(lines[-1]):
                hint = "; as root, --dir must be a folder that the postgres user can enter"
            raise UserError(f"{program} failed: {lines[-1]}{hint}")
        return result

    def _check_port_free(self, port: int, option: str) -> None:
        """UserError if another program listens on `port`: it, not ours, would answer."""
        with socket.socket() as probe:
            if probe.connect_ex((self.local_host, port)) == 0:
                raise UserError(
                    f"port {port} on {self.local_host} is in use by another program; "
                    f"choose a free one with {option}"
                )

    def _wait_until_healthy(self, process: subprocess.Popen, timeout: float = 180) -> None:
        # A proxy set in the environment must not stand between us and our own server.
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            if time.monotonic() > deadline:
                raise UserError(f"mlflow server did not answer in {timeout:.0f} s (see {self.log})")
            try:
                with direct.open(f"{self.url}/health", timeout=2):
                    return
            except OSError:  # Not listening, or not answering, yet.
                time.sleep(0.5)
        last = (self.log.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise UserError(f"mlflow server exited with {process.returncode}: {last} (see {self.log})")


@functools.cache
def postgres_program(name: str) -> str:
    """The path of a PostgreSQL program: the newest version's, else the one on PATH."""
    folders = [path for pattern in PROGRAM_FOLDERS for path in Path("/").glob(pattern)]
    folders.sort(key=lambda folder: [int(n) for n in re.findall(r"\d+", folder.parent.name)])
    search_path = [*map(str, reversed(folders)), os.environ.get("PATH", os.defpath)]
    found = shutil.which(name, path=os.pathsep.join(search_path))
    if found is None:
        raise UserError(
            f"PostgreSQL's {name} is not installed: apt-get install postgresql "
            "(Debian, Ubuntu) or brew install postgresql@16 (macOS)"
        )
    return found


def stop_process_group(pid: int, timeout: float = 20) -> None:
    """Stop a process group with SIGTERM, or with SIGKILL after `timeout` seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
