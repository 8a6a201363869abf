"""What every benchmark's command line shares."""

from __future__ import annotations

import argparse


def parser(
    doc: str | None, *, problems: int | None = None, schedule: str | None = None
) -> argparse.ArgumentParser:
    """An argument parser whose help is the script's docstring, laid out as written.

    Args:
        doc: The script's docstring.
        problems: When given, the default of a ``--problems`` option (problems solved per run).
        schedule: When given, the default of a ``--schedule`` option (PaCoRe's K vector, e.g. ``32,4``).
    """
    made = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if problems is not None:
        made.add_argument(
            "--problems", type=int, default=problems, help=f"problems per run (default {problems})"
        )
    if schedule is not None:
        made.add_argument(
            "--schedule", default=schedule, help=f"PaCoRe schedule, e.g. 32,4 (default {schedule})"
        )
    return made
