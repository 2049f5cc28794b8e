"""A real PostgreSQL server for the tests: Debian's binaries (`make postgresql`), a throwaway cluster.

`initdb` and `postgres` refuse to run as root, so under root they run as the `postgres` user (the
package creates it) on a temporary folder it owns. The server listens on a free port of 127.0.0.1
only, trusts local connections (no password: nothing else can reach it) and, for the tests, runs with
fsync off (they restart the store, never the machine). Each test gets a database of its own.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

_START_S = 60.0  # the most a cold start may take before the fixture gives up (a hang guard, not a bound)


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's bin folder."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parents[1].name))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: `make postgresql` installs Debian's package")
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, fsync: bool = False) -> None:
        self.fsync = fsync  # off for the tests (they never crash the machine); on for benchmarks
        self.bin = postgres_bin()
        self.root = Path(tempfile.mkdtemp(prefix="llava-serve-pg-"))
        self.port = free_port()
        self.user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self.process: subprocess.Popen[bytes] | None = None

    def _as_owner(self) -> dict:
        return {} if self.user is None else {"user": self.user.pw_uid, "group": self.user.pw_gid}

    def start(self) -> PostgresServer:
        data, log = self.root / "data", self.root / "server.log"
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        subprocess.run([self.bin / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, **self._as_owner())
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [self.bin / "postgres", "-D", data, "-p", str(self.port), "-k", self.root,
                 "-c", "listen_addresses=127.0.0.1", "-c", f"fsync={'on' if self.fsync else 'off'}",
                 "-c", "max_connections=300"],
                stdout=out, stderr=subprocess.STDOUT, **self._as_owner())
        deadline = time.monotonic() + _START_S
        while True:
            try:
                psycopg.connect(self.dsn("postgres")).close()
                return self
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"PostgreSQL did not start:\n{log.read_text()}") from None
                time.sleep(0.1)

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database's URL."""
        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown: clients disconnected, the cluster left clean
            self.process.wait(60)
        shutil.rmtree(self.root, ignore_errors=True)
