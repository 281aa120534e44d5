"""One way every command-line tool turns errors into an exit code: `run_main(main)`, with `ArgumentParser`.

An error the user can act on (a bad flag, a missing or damaged file, a diverged run) is a ValueError, a
FileNotFoundError or a `RunError`: it is printed as one `error:` line and the exit code is 2. Ctrl-C
says how to resume (130). Anything else is a bug and keeps its traceback.
"""
import argparse
import re
import sys

KINDS = {"int": "an integer", "float": "a number", "finite": "a finite number",
         "fraction": "a fraction such as 0.5 or 1/2"}  # what argparse's "invalid <type> value" means in words


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are ValueErrors, so that a bad flag is the same one `error: --flag VALUE: ...` line and
    exit code 2 (through run_main) as every other refusal, not a usage block; the description keeps its layout."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        bad = re.fullmatch(r"argument (\S+?)(?:/\S+)?: invalid (\w+) value: '(.*)'", message)
        if bad:
            flag, kind, value = bad.groups()
            message = f"{flag} {value}: expected {KINDS.get(kind, kind)}"
        raise ValueError(f"{message} (see {self.prog} -h)")


class RunError(RuntimeError):
    """A run that cannot go on for a reason the user can fix (the message says how)."""


NOT_FINISHED = 3  # the exit code of a run that stopped at its --time-limit, its checkpoint written


class NotFinished(RuntimeError):
    """A run stopped cleanly at its --time-limit: its checkpoint is written and the same command continues it."""


def run_main(main, *args):
    """sys.exit(main(*args)): 0 (or main's own code) on success, 2 on a known error, NOT_FINISHED (3) when a
    --time-limit stopped the run, 130 on Ctrl-C."""
    try:
        code = main(*args)
    except NotFinished as e:
        print(f"not finished: run the same command again to continue ({e})", file=sys.stderr)
        code = NOT_FINISHED
    except (ValueError, FileNotFoundError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume from the last checkpoint", file=sys.stderr)
        code = 130
    sys.exit(code or 0)


def arch_folder(arch):
    """An arch name as part of a folder name: "tv:resnet18" -> "tv_resnet18" (a colon is not allowed on Windows)."""
    return arch.replace(":", "_")
