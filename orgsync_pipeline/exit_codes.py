"""The exit codes of the orgsync command (documented in the README's "Operating orgsync")."""

OK = 0
FAILED = 1
SETTINGS = 2
DATABASE = 3
CLERK = 4
DELETION_GUARD = 5
INTERRUPTED = 130

MEANINGS: dict[int, str] = {
    OK: "success; also a server (serve-webhooks, dev, emulator) stopped with Ctrl-C or SIGTERM",
    FAILED: "a run failed for a reason not listed below, or an unexpected error (a bug: please report it)",
    SETTINGS: "a setting or argument is missing or invalid (the message names it)",
    DATABASE: "the database is unreachable, refused the login, or refused a statement",
    CLERK: "Clerk is unreachable, refused CLERK_SECRET_KEY, or rejected a request",
    DELETION_GUARD: "the deletion guard stopped a full sync (ORGSYNC_MAX_DELETE_FRACTION)",
    INTERRUPTED: "interrupted (Ctrl-C or SIGTERM) before a one-shot command finished",
}
