"""Templated text (the "reconstruction" test): incrementing or repeating, decided on the
detokenized text of a sequence exactly as EleutherAI/semantic-memorization's
`filters/pattern.py` decides it (`is_pattern`), so that categories agree with the paper's.

Incrementing: the text split into alternating runs of digits and non-digits (whitespace-separated
integer literals such as `0x1f` read as numbers first); with more than 4 elements the first and
last are dropped (they may be cut off); for some period k every element equals the one k before
in type, strings equal, numbers a constant nonzero step apart. Repeating: the same test on the
text's characters, where only equal characters can match (the text repeats one chunk)."""

from __future__ import annotations

import re

_DIGITS = re.compile("([0-9]+)")
_SPACE = re.compile(r"\s+")


def is_incrementing(text: str) -> bool:
    found, step = _periodic(_words(text))
    return found and step is not None and step != 0


def is_repeating(text: str) -> bool:
    """`_periodic` on the characters, at the speed of string comparison: characters carry no
    step, so the text (ends trimmed as there) repeats with period k when it equals itself
    shifted by k."""
    if len(text) <= 3:  # as `_periodic`: under 3 elements, or 3 that are not all numbers
        return False
    if len(text) > 4:
        text = text[1:-1]
    return any(text[k:] == text[:-k] for k in range(1, len(text) // 2 + 1))


def is_templated(text: str) -> bool:
    return is_incrementing(text) or is_repeating(text)


def _periodic(splits: list) -> tuple[bool, int | None]:
    """pattern.py's `find_if_incrementing_or_repeating`: whether `splits` is periodic with
    numbers in arithmetic progression, and the step (None where no number steps). Kept as they
    wrote it, quirks included (three elements are tested without abs(), and the step found at
    one period carries over to the next), because the published categories come from it."""
    if len(splits) < 3:
        return False, 0
    if len(splits) == 3:
        if not all(type(s) is int for s in splits):
            return False, 0
        return (splits[2] - 2 * splits[1] + splits[0]) < 1e-5, splits[2] - splits[1]
    if len(splits) > 4:
        splits = splits[1:-1]
    step = None
    for period in range(1, len(splits) // 2 + 1):
        periodic, stepped = True, False
        for first in range(period):
            current = None
            for i in range(first + period, len(splits), period):
                now, before = splits[i], splits[i - period]
                if type(now) is not type(before):
                    periodic = False
                    break
                if current is None and type(now) is int:
                    current = now - before
                elif type(now) is int:
                    if abs(now - before - current) >= 1e-10:
                        periodic = False
                        break
                    stepped = True
                elif now != before:
                    periodic = False
                    break
            if not periodic:
                break
            if step is None and current is not None and current != 0:
                step = current
        if periodic:
            if step is not None and stepped:
                return True, step
            if step is None:
                return True, None
    return False, 0


def _words(text: str) -> list:
    """pattern.py's `split_text(text, "incrementing")`: integer literals become numbers, the
    text's repr (quotes and escapes stripped) is split into digit and non-digit runs."""
    rebuilt = []
    for word in _SPACE.sub(" ", text).split(" "):
        number = _integer(word, 0)
        rebuilt.append(word if number is None else str(number))
    splits = []
    for word in repr(" ".join(rebuilt).strip()).split(" "):
        for escape in ("\\n", "\\x", "\\", "'", '"'):
            word = word.replace(escape, "")
        splits.extend(_DIGITS.split(word))
    out = []
    for word in splits:
        word = word.strip("'")
        if word.strip(" ") == "":
            continue
        number = _integer(word, 10)
        out.append(word if number is None else number)
    return out


def _integer(word: str, base: int) -> int | None:
    """int(word, base), None where it raises. An ASCII word without a digit never parses, and
    skipping the exception there makes the test several times faster."""
    if word.isascii() and _DIGITS.search(word) is None:
        return None
    try:
        return int(word, base)
    except ValueError:
        return None
