"""AUTOMATIC1111's prompt syntax: emphasis, weights, escapes and BREAK (its modules/prompt_parser.py).

    (word)      attention x 1.1, nested: ((word)) x 1.21     [word]   x 1/1.1
    (word:1.3)  x 1.3 (any number, negative too)            \\( \\) \\[ \\] \\\\   literal characters
    BREAK       the text after it starts a new 75-token chunk

parse() is A1111's `parse_prompt_attention`, quirks included: unbalanced brackets close at the end of the text,
`(a:b)` is the text "a:b" x 1.1, a lone backslash is dropped, and a BREAK inside brackets is weighted like text
(so it is no longer a BREAK). Prompt editing `[from:to:when]` and alternation `[a|b]` are not supported; they
parse as A1111's emphasis parser reads them (square brackets, x 1/1.1, the colons and bars kept as text), which
`unsupported()` names so a caller can say so.
"""

from __future__ import annotations

import re

BREAK = ("BREAK", -1.0)  # parse()'s marker, as A1111's: the next text starts a new chunk
ROUND, SQUARE = 1.1, 1 / 1.1

_TOKEN = re.compile(r"""
    \\\( | \\\) | \\\[ | \\\] | \\\\ | \\   # escapes; a lone backslash escapes nothing and is dropped
  | \( | \[
  | :\s*([+-]?[.\d]+)\s*\)                 # ":1.3)": closes a round bracket with that weight
  | \) | \]
  | [^\\()\[\]:]+                          # plain text
  | :                                      # a colon that is not a weight is text
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_SCHEDULED = re.compile(r"\[[^\[\]]*:\s*[+-]?[.\d]+\s*\]")  # [from:to:when], [to:when]
_ALTERNATE = re.compile(r"\[[^\[\]]*\|[^\[\]]*\]")  # [a|b]
_AND = re.compile(r"\bAND\b")


def parse(text: str) -> list[tuple[str, float]]:
    """Text -> [(text, weight), ...] with runs of equal weight merged; BREAK where the text said BREAK.

    >>> parse("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")[:3]
    [('a ', 1.0), ('house', 1.5730000000000004), (' ', 1.1)]
    """
    out: list[list] = []  # [text, weight], weights multiplied in place as brackets close
    round_open: list[int] = []  # where each open bracket's text starts in `out`
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for piece in out[start:]:
            piece[1] *= factor

    for m in _TOKEN.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            out.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(out))
        elif token == "[":
            square_open.append(len(out))
        elif weight is not None and round_open:
            multiply(round_open.pop(), _weight(weight, token))
        elif token == ")" and round_open:
            multiply(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            multiply(square_open.pop(), SQUARE)
        else:  # text, or a bracket with nothing to close
            for i, part in enumerate(_BREAK.split(token)):
                if i:
                    out.append(list(BREAK))
                out.append([part, 1.0])

    for start in round_open:  # unbalanced: closed at the end, in the order they were opened (as A1111)
        multiply(start, ROUND)
    for start in square_open:
        multiply(start, SQUARE)

    merged: list[list] = []
    for piece in out or [["", 1.0]]:
        if merged and merged[-1][1] == piece[1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [(t, float(w)) for t, w in merged]


def is_break(piece: tuple[str, float]) -> bool:
    return piece[0] == BREAK[0] and piece[1] == BREAK[1]


def unsupported(text: str) -> list[str]:
    """A1111 syntax in `text` that sdkit reads differently from A1111 (as emphasised text), one note each."""
    notes = []
    if _SCHEDULED.search(text):
        notes.append("prompt editing [from:to:when]")
    if _ALTERNATE.search(text):
        notes.append("alternation [a|b]")
    if _AND.search(text):
        notes.append("composable prompts (AND)")
    return notes


def _weight(number: str, token: str) -> float:
    try:
        return float(number)
    except ValueError:  # "(a:1.2.3)": A1111 fails the generation on it too
        raise ValueError(f"prompt: {token.strip()!r} has weight {number!r}, which is not a number; "
                         f"write e.g. (word:1.2), or \\) for a literal bracket") from None
