"""The exit codes of the `vaeguard` command, in one place (README and `vaeguard --help` list them).

Scripts and schedulers (cron, a Kubernetes CronJob, CI) branch on them, so a code keeps its
meaning across commands: 2 always means "nothing was done, fix the command line or the
settings", never "the data was bad". The error classes of `vaeguard.errors` carry their code
(``exit_code``); a test holds them to this enum.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Why `vaeguard` stopped. Every non-zero exit also prints one line on stderr."""

    #: Done.
    OK = 0
    #: The command could not do its work: an unusable input file or model bundle, a registry
    #: operation refused, an alert not delivered, a broker or sink unreachable.
    FAILURE = 1
    #: Nothing was done: a missing or unknown option, a bad option value, a bad setting in the
    #: config file or the environment, a model kind the command cannot serve.
    USAGE = 2
    #: `vaeguard retrain` refused to train: too little data, an incident in the window, or
    #: another run in progress.
    REFUSED = 3
    #: `vaeguard retrain` trained a candidate that failed the validation gate; the current
    #: model stays.
    REJECTED = 4
    #: A bug in vaeguard (an unexpected exception); VAEGUARD_DEBUG=1 shows the traceback.
    INTERNAL = 70
    #: Interrupted (Ctrl-C, SIGINT).
    INTERRUPTED = 130


#: One line per code, for `vaeguard --help` (and the README's table).
DESCRIPTIONS: dict[ExitCode, str] = {
    ExitCode.OK: "done",
    ExitCode.FAILURE: "the command failed: unusable input data or model, registry refused, "
    "alert not delivered, broker or sink unreachable",
    ExitCode.USAGE: "nothing was done: bad or missing option or value, bad setting "
    "(config file or environment), a model kind the command cannot serve",
    ExitCode.REFUSED: "retrain refused to train (too little data, incident, run in progress)",
    ExitCode.REJECTED: "retrain's candidate failed the validation gate (current model kept)",
    ExitCode.INTERNAL: "a bug in vaeguard (VAEGUARD_DEBUG=1 shows the traceback)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


def exit_code_of(exc: BaseException) -> ExitCode:
    """The code of an error raised by a command (`vaeguard.errors` classes carry theirs)."""
    from vaeguard.errors import VaeguardError

    if isinstance(exc, VaeguardError):
        try:
            return ExitCode(exc.exit_code)
        except ValueError:  # a plugin's own code: still a failure, never a crash here
            return ExitCode.FAILURE
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    if isinstance(exc, OSError):
        return ExitCode.FAILURE
    return ExitCode.INTERNAL


def help_epilog() -> str:
    """The exit-code table of `vaeguard --help` (``\\b`` keeps click from rewrapping it)."""
    lines = [f"  {int(code):>3}  {text}" for code, text in DESCRIPTIONS.items()]
    return "\b\nExit codes:\n" + "\n".join(lines)
