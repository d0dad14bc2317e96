"""The run's output folder: atomic writes (temp file, fsync, rename), a per-process
lock and clean-up of a killed run's temp files."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from dgp_jax.images import (
    encode_image,
)
from dgp_jax.run.settings import RunError

# How often a folder that vanished under us (see check_writable) is made again.
VANISHED_RETRIES = 20


# --------------------------------------------------------------------------- output folder
class OutputDir:
    """The run's output folder: atomic writes, a per-process lock, temp-file cleanup."""

    def __init__(self, root: str | os.PathLike, process_index: int = 0, process_count: int = 1):
        self.root = Path(root)
        self.process_index = process_index
        self.process_count = process_count
        self._lock = None
        self._tmp_suffix = f".tmp-{process_index}"

    @staticmethod
    def check_writable(root: str | os.PathLike, keep: bool = True, flag: str = "--out") -> Path:
        """Create ``root`` and write a probe file there, or raise a RunError (that names
        ``flag``, the option the user gave the folder with).

        A real write, not ``os.access``: root passes every permission check, and a path
        under a regular file or on a read-only mount fails only when written. With
        ``keep=False`` the folders this call created are removed again (a check before the
        other setup checks, so that a refused run leaves no folder behind).
        """
        root = Path(root)
        created = []
        parent = root.absolute()
        # os.path.exists: False for a name the OS refuses (too long), where Path.exists
        # raises; the mkdir below then fails with the reason.
        while not os.path.exists(parent) and parent != parent.parent:
            created.append(parent)
            parent = parent.parent
        try:
            for attempt in range(VANISHED_RETRIES + 1):
                root.mkdir(parents=True, exist_ok=True)
                probe = root / f".dgp_jax.probe.{os.getpid()}"
                try:
                    probe.write_bytes(b"")
                    break
                except FileNotFoundError:
                    # The folder vanished after our mkdir: the processes of one
                    # multi-process run start together, and another one's keep=False
                    # check removes the empty folder it made. Make it again.
                    if attempt == VANISHED_RETRIES:
                        raise
            probe.unlink()
        except OSError as err:
            raise RunError(
                f"output folder {root} is not writable ({err.strerror or err}): "
                f"choose another {flag}"
            ) from None
        finally:
            if not keep:
                for folder in created:  # innermost first
                    with contextlib.suppress(OSError):
                        folder.rmdir()
        return root

    def open(self) -> OutputDir:
        self.check_writable(self.root)
        lock_path = self.root / f".dgp_jax.lock.{self.process_index}"
        vanished = 0
        while True:
            try:
                self._lock = open(lock_path, "a")  # noqa: SIM115 - held for the whole run
            except FileNotFoundError:
                # Removed by another process's keep=False check (see check_writable).
                vanished += 1
                if vanished > VANISHED_RETRIES:
                    raise
                self.check_writable(self.root)
                continue
            try:
                import fcntl

                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except ImportError:  # not POSIX: no lock, the rest still works
                break
            except OSError:
                self._lock.close()
                self._lock = None
                raise RunError(
                    f"another dgp-jax run (process {self.process_index}) is writing to "
                    f"{self.root}; wait for it to finish or choose another --out"
                ) from None
            # The lock file is removed when a run ends: lock again if we got a removed one.
            try:
                same = os.stat(lock_path).st_ino == os.fstat(self._lock.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            self._lock.close()
        self._lock_path = lock_path
        # Our temp files can only be leftovers of a killed run: we hold the lock.
        for stale in self.root.rglob(f".*{self._tmp_suffix}"):
            stale.unlink(missing_ok=True)
        return self

    def close(self) -> None:
        if self._lock is not None:
            # Removed while still held, so that a finished folder holds no lock file; a run
            # that opened it meanwhile notices (see open) and locks a new one.
            with contextlib.suppress(OSError, AttributeError):
                self._lock_path.unlink()
            self._lock.close()
            self._lock = None

    def __enter__(self) -> OutputDir:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def path(self, rel: str) -> Path:
        return self.root / rel

    def write_bytes(self, rel: str, data: bytes) -> Path:
        """Write ``data`` to ``rel`` under the folder: temp file, fsync, rename."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}{self._tmp_suffix}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def write_text(self, rel: str, text: str) -> Path:
        return self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str, obj: Any) -> Path:
        return self.write_text(rel, json.dumps(obj, indent=1, sort_keys=True) + "\n")

    def write_image(self, rel: str, x: np.ndarray) -> Path:
        return self.write_bytes(rel, encode_image(x, "PNG"))

    def summary_names(self) -> tuple[str, str]:
        if self.process_count > 1:
            return f"summary.{self.process_index}.json", f"summary.{self.process_index}.csv"
        return "summary.json", "summary.csv"
