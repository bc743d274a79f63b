"""Console logging for the ``orgsync`` command: quiet by default, text or JSON lines, never a secret.

By default only orgsync's own INFO lines and every library's warnings reach the console
(``--verbose`` shows the libraries' INFO too). ``ORGSYNC_LOG_FORMAT=json`` writes one JSON object
per line for log shippers.
"""

import json
import logging
import sys
from datetime import UTC, datetime

from orgsync_pipeline.failures import redact

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
# The loggers a console shows at INFO by default; libraries stay at WARNING unless --verbose.
OWN_LOGGERS = ("orgsync_pipeline",)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and the exception's type)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = record.exc_info[0].__name__
            entry["detail"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class RedactingFormatter(logging.Formatter):
    """The text format, with secrets masked in the message and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_logging(
    *, verbose: bool = False, log_format: str = "text", own_level: int = logging.INFO
) -> None:
    """Send log records to stderr in ``log_format``; libraries' INFO only when ``verbose``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else RedactingFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else own_level)
    # uvicorn configures its own handlers; route them through ours so the format is the same.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
