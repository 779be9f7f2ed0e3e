"""A real PostgreSQL server for tests, with pgvector: the binaries the ``pgserver`` wheel
bundles (PostgreSQL 16 and ``vector.so``), run straight from its package folder.

PostgreSQL refuses to run as root. Where the tests run as root (containers), every server
binary runs as ``nobody`` instead, in a data folder that ``nobody`` owns; pgserver itself
would create a system user and open up every parent folder of its data, which tests should
not do to the machine.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import free_port

#: The user the server runs as when the tests run as root.
UNPRIVILEGED_USER = "nobody"


def postgres_bin() -> Path:
    """The folder of the ``pgserver`` wheel's PostgreSQL programs (``postgres``, ``initdb``,
    ``pg_isready``, ...)."""
    import importlib.util

    # Found without importing pgserver, whose import creates folders and warns.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the pgserver package is not installed (pip install pgserver)")
    folder = Path(next(iter(spec.submodule_search_locations))).resolve() / "pginstall" / "bin"
    if not (folder / "postgres").is_file():
        raise FileNotFoundError(f"no PostgreSQL binaries in {folder} (pip install pgserver)")
    return folder


class PostgresServer:
    """A real PostgreSQL with pgvector on a free loopback port, trusting every local
    connection (user ``postgres``, no password); stoppable, killable and restartable on the
    same data folder. Commits survive :meth:`kill` (the kernel keeps what was written; only
    ``fsync`` is off, which matters for a machine crash, not a process crash)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bin = postgres_bin()
        self.folder = Path(tempfile.mkdtemp(prefix="vlgraph-postgres-"))
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        self._process: subprocess.Popen | None = None
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam(UNPRIVILEGED_USER)
            self._run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
            # nobody must reach its data folder (mkdtemp makes it root's alone).
            self.folder.chmod(0o755)
            self._check_reachable()

    @property
    def dsn(self) -> str:
        """The connection string of the server's ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        """Whether this object started the server and it has not been stopped or killed."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (same port and data on a restart; ``initdb`` the first time) and
        wait until it accepts connections."""
        if not (self.data / "PG_VERSION").is_file():
            self._initdb()
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "",
            "fsync": "off",
            "max_connections": "100",
            "shared_buffers": "128MB",
            "maintenance_work_mem": "256MB",
        }
        settings = [arg for key, value in options.items() for arg in ("-c", f"{key}={value}")]
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), *settings],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env=self._env(),
                start_new_session=True,
                **self._run_as,
            )
        deadline = time.monotonic() + 30
        while not self._ready():
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"postgres exited at start:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"postgres did not start within 30 s:\n{self._log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open sessions are ended, everything committed is kept."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self._process = None

    def kill(self) -> None:
        """SIGKILL the server and every process it started: a crash, with no shutdown work.
        The next :meth:`start` recovers from the write-ahead log."""
        if self._process is None:
            return
        import psutil

        try:
            processes = [psutil.Process(self._process.pid)]
            processes += processes[0].children(recursive=True)
        except psutil.NoSuchProcess:
            processes = []
        # The backends are session leaders of their own, so the postmaster's process group
        # does not reach them: each one is killed by its id.
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(processes, timeout=10)
        self._process.wait()
        self._process = None

    def remove(self) -> None:
        """Stop the server and delete its data."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _initdb(self) -> None:
        self.data.mkdir(mode=0o700, exist_ok=True)
        if self._run_as:
            os.chown(self.data, self._run_as["user"], self._run_as["group"])
        command = [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres"]
        command += ["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"]
        done = subprocess.run(
            command,
            cwd=self.folder,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=120,
            **self._run_as,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def _ready(self) -> bool:
        command = [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)]
        command += ["-U", "postgres", "-t", "1"]
        probe = subprocess.run(command, env=self._env(), capture_output=True, timeout=10)
        return probe.returncode == 0

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def _check_reachable(self) -> None:
        """Fail clearly where ``nobody`` cannot reach the programs or the temporary folder."""
        for path in (self.bin, self.folder):
            for folder in [path, *path.parents]:
                if not folder.stat().st_mode & stat.S_IXOTH:
                    raise PermissionError(
                        f"{folder} is not searchable by other users, so PostgreSQL (run as "
                        f"{UNPRIVILEGED_USER}, since it refuses root) cannot reach {path}"
                    )
