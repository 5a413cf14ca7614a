"""What playbooks/migrate.yml runs: its variables turned into one `fleetsync run`.

The playbook hands over every variable it knows, as Ansible resolved it for a
host (-e, then host_vars, then the groups' group_vars, then group_vars/all.yml),
through the `fleetsync_run` lookup. Here they become the command line; bad
input is one line (PlaybookError), said by the task that computes it, before
anything runs.

Names: `src` and `dest` as documented; every other option has the `fleetsync_`
prefix, because Ansible reserves some plain names (`port` warns on every run),
but for `ansible_limit`: ansible-playbook's own `--limit`, which becomes
`fleetsync run --limit` so that the run copies on the hosts the play checked.
The plain names of the first release are still read, with a warning, for one
more release (OLD_NAMES).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from fleetsync.ledger.errors import FleetsyncError

from . import defaults
from .listener import url, url_file

# Variable -> `fleetsync run` option taking a value.
VALUED = {
    "fleetsync_ledger": "--ledger",
    "fleetsync_batch_files": "--batch-files",
    "fleetsync_batch_bytes": "--batch-bytes",
    "fleetsync_producers": "--producers",
    "fleetsync_max_retries": "--max-retries",
    "fleetsync_max_delete": "--max-delete",
    "fleetsync_heartbeat_timeout": "--heartbeat-timeout",
    "fleetsync_bwlimit": "--bwlimit",
    "fleetsync_stop_at": "--stop-at",
    "fleetsync_max_duration": "--max-duration",
    "fleetsync_max_transfer": "--max-transfer",
    "fleetsync_cutoff": "--cutoff",
    "fleetsync_bind": "--bind",
    "fleetsync_port": "--port",
    "fleetsync_slots": "--slots",
    "fleetsync_items_per_run": "--items-per-run",
    "fleetsync_checksum_choice": "--checksum-choice",
    "fleetsync_verify_rate": "--verify-rate",
    # ansible-playbook's own --limit: the hosts of the play are the hosts of the copy.
    "ansible_limit": "--limit",
}
# Variable -> `fleetsync run` flag, on when the variable is true.
FLAGS = {
    "fleetsync_delete": "--delete",
    "fleetsync_delete_dry_run": "--delete-dry-run",
    "fleetsync_verify": "--verify",
    "fleetsync_rescan": "--rescan",
    "fleetsync_no_api": "--no-api",
    "fleetsync_no_token": "--no-token",
    "fleetsync_no_default_excludes": "--no-default-excludes",
    "fleetsync_change_filters": "--change-filters",
    "fleetsync_delete_excluded": "--delete-excluded",
    "fleetsync_from0": "--from0",
}
# The first release's names, read for one more release with a warning.
OLD_NAMES = {
    "ledger": "fleetsync_ledger", "batch_files": "fleetsync_batch_files",
    "batch_bytes": "fleetsync_batch_bytes", "producers": "fleetsync_producers",
    "max_retries": "fleetsync_max_retries", "heartbeat_timeout": "fleetsync_heartbeat_timeout",
    "bind": "fleetsync_bind", "port": "fleetsync_port", "token": "fleetsync_token",
    "rsync_options": "fleetsync_rsync_options",
}

_TRUE = {"true", "yes", "on", "1", "y", "t"}
_FALSE = {"false", "no", "off", "0", "n", "f", ""}


class PlaybookError(FleetsyncError):
    """A variable the playbook cannot use: said in one line, nothing run."""


@dataclass
class Run:
    """What the playbook runs: `argv`, and the resolved SRC and DEST the preflight checks."""
    argv: list[str]
    src: str
    dest: str
    warnings: list[str] = field(default_factory=list)
    api: str = ""          # where to watch the run, said before it starts
    report: list[str] = field(default_factory=list)   # `fleetsync report` after it; []: none
    report_to: str = ""    # the file it writes (fleetsync_report, absolute)


def _absolute(path: str, cwd: str) -> str:
    """A local path against the operator's working directory; a remote one (host:/path,
    rsync://) as it is."""
    if ":" in path.split("/", 1)[0]:
        return path
    return os.path.normpath(os.path.join(cwd, os.path.expanduser(path)))


def _flag(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise PlaybookError(f"{name} must be true or false, not {value!r}")


def rsync_options(value) -> list[str]:
    """fleetsync_rsync_options: a list, or a string of options split at spaces
    (`-e fleetsync_rsync_options=-AX`, `"-A -X"`)."""
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise PlaybookError(f"fleetsync_rsync_options must be a string or a list, not {value!r}")


def filter_rules(value) -> list[str]:
    """fleetsync_filters: a list of rules in rsync's syntax, `- PATTERN` or `+ PATTERN`,
    in order (a list keeps it); a string is one rule. Checked in full by `fleetsync run`."""
    if value is None:
        return []
    rules = [value] if isinstance(value, str) else value
    if not isinstance(rules, (list, tuple)):
        raise PlaybookError(f"fleetsync_filters must be a list of '- PATTERN' / '+ PATTERN' "
                            f"rules, not {value!r}")
    for rule in rules:
        if not isinstance(rule, str) or rule[:2] not in ("- ", "+ ", "-_", "+_"):
            raise PlaybookError(f"fleetsync_filters: {rule!r} is not '- PATTERN' or "
                                "'+ PATTERN'")
    return list(rules)


def _renamed(given: dict) -> tuple[dict, list[str]]:
    """The variables under their new names, and a warning per old name still used."""
    given = {k: v for k, v in given.items() if v is not None}
    warnings = []
    for old, new in OLD_NAMES.items():
        if old in given:
            warnings.append(f"fleetsync: the variable {old!r} is now {new!r}; the old name "
                            "is read for one more release")
            given.setdefault(new, given[old])
    return given, warnings


def command(given: dict, python: str, inventory: str, cwd: str) -> Run:
    """`fleetsync run` for the playbook's variables (None: not set), run with `python`
    on `inventory`, relative paths taken from `cwd`."""
    v, warnings = _renamed(given)
    for name in ("src", "dest"):
        if not str(v.get(name, "")).strip():
            raise PlaybookError(f"give the migration: -e src=/path -e dest=/path "
                                f"(or host:/path); {name} is not set")
    src, dest = _absolute(str(v["src"]), cwd), _absolute(str(v["dest"]), cwd)
    v["fleetsync_ledger"] = _absolute(str(v.get("fleetsync_ledger", "fleetsync.db")), cwd)
    if str(v.get("ansible_limit", "")).startswith("@"):
        # --limit @FILE (a retry file): read by `fleetsync run` from another directory.
        v["ansible_limit"] = "@" + _absolute(str(v["ansible_limit"])[1:], cwd)
    argv = [python, "-m", "fleetsync.controller.cli", "run", "--src", src, "--dest", dest,
            "--inventory", _absolute(inventory, cwd)]
    for name, option in VALUED.items():
        if name in v and str(v[name]).strip() != "":
            argv += [option, str(v[name])]
    argv += [option for name, option in FLAGS.items() if _flag(name, v.get(name, False))]
    argv += [f"--rsync-option={o}" for o in rsync_options(v.get("fleetsync_rsync_options"))]
    argv += [f"--filter={r}" for r in filter_rules(v.get("fleetsync_filters"))]
    if str(v.get("fleetsync_exclude_from", "")).strip():
        argv += ["--exclude-from", _absolute(str(v["fleetsync_exclude_from"]), cwd)]
    if str(v.get("fleetsync_files_from", "")).strip():
        argv += ["--files-from", _absolute(str(v["fleetsync_files_from"]), cwd)]
    # The token is not in the command line (ps shows it): the task passes it in
    # FLEETSYNC_TOKEN.
    report = _report(v, python, cwd)
    return Run(argv, src, dest, warnings, _api(v), report, report[-1] if report else "")


# fleetsync_report's suffix -> `fleetsync report --format`.
REPORT_FORMATS = {".csv": "csv", ".json": "json", ".html": "html"}


def _report(v: dict, python: str, cwd: str) -> list[str]:
    """fleetsync_report: PATH, the report written once the run ends (when it copied:
    exit 0, 1 or 3; it matters most when entries did not arrive), its format from the
    suffix; an HTML report has its CSV beside it (PATH with .csv), which it names by
    SHA-256. The argv ends with PATH."""
    path = str(v.get("fleetsync_report") or "").strip()
    if not path:
        return []
    path = _absolute(path, cwd)
    stem, suffix = os.path.splitext(path)
    if suffix.lower() not in REPORT_FORMATS:
        raise PlaybookError(f"fleetsync_report {path!r}: give a file ending in .csv, .json "
                            "or .html (its format)")
    fmt = REPORT_FORMATS[suffix.lower()]
    argv = [python, "-m", "fleetsync.controller.cli", "report", "--ledger",
            v["fleetsync_ledger"], "--format", fmt]
    return argv + (["--csv", stem + ".csv"] if fmt == "html" else []) + ["-o", path]


def _api(v: dict) -> str:
    """Where the run's API will answer, said before the run: a task's output shows only
    when the task ends (fleetsync's own `API at` line, hours later)."""
    if _flag("fleetsync_no_api", v.get("fleetsync_no_api", False)):
        return "fleetsync's API is off (fleetsync_no_api)"
    bind = str(v.get("fleetsync_bind") or defaults.API_HOST)
    port = str(v.get("fleetsync_port") or defaults.API_PORT).strip()
    if port == "0":
        return (f"fleetsync's API takes a free port: once it listens, its URL is in "
                f"{url_file(v['fleetsync_ledger'])} (the file goes when the run ends)")
    return f"fleetsync's API: {url(bind, port)} (the dashboard at /; also in " \
           f"{url_file(v['fleetsync_ledger'])} while the run goes on)"
