"""One way every command-line tool turns errors into an exit code: `run_main(main)`.

An error the user can act on (a bad flag, a missing or damaged file, a diverged run) is a ValueError, a
FileNotFoundError or a `RunError`: it is printed as one `error:` line and the exit code is 2. Ctrl-C
says how to resume (130). Anything else is a bug and keeps its traceback.
"""
import sys


class RunError(RuntimeError):
    """A run that cannot go on for a reason the user can fix (the message says how)."""


def run_main(main, *args):
    """sys.exit(main(*args)): 0 (or main's own code) on success, 2 on a known error, 130 on Ctrl-C."""
    try:
        code = main(*args)
    except (ValueError, FileNotFoundError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume from the last checkpoint", file=sys.stderr)
        code = 130
    sys.exit(code or 0)
