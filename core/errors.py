"""The one message a person reads for an error, whatever carried it here: a config
instantiation (Hydra / OmegaConf wrap the error of a constructor), a DataLoader worker (PyTorch
re-raises a worker's error with the worker's whole traceback as its message), or both."""

from __future__ import annotations

import re

WORKER_HEADER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")
# the last line of a traceback: "<module.>Name: message" at column 0
EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*: ")


def worker_message(text: str) -> str:
    """The original message of an error re-raised from a DataLoader worker (the text after the
    worker traceback's last exception line); any other text unchanged."""
    if not WORKER_HEADER.match(text):
        return text
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if EXCEPTION_LINE.match(line) and not line.startswith("Traceback")]
    if not starts:
        return text
    first = lines[starts[-1]]
    return "\n".join([first[EXCEPTION_LINE.match(first).end():], *lines[starts[-1] + 1:]]).strip()


def readable(err: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException:
    """The first error of one of ``kinds`` in ``err``'s chain of causes (``err`` itself when none is)."""
    seen, current = set(), err
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return err


def one_message(err: BaseException, kinds: tuple[type[BaseException], ...] = ()) -> str:
    """The message of ``readable(err, kinds)``, unwrapped from a DataLoader worker's traceback."""
    return worker_message(str(readable(err, kinds)))
