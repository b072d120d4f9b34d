"""Finding protected text (canaries, a request's system prompt) in output, in time linear in it.

Text is compared whitespace- and case-folded (`casefold` has no context rules, so pieces fold as
the whole does). A secret of at most `WINDOW` characters leaks when it appears whole; a longer
one leaks when any `WINDOW`-character piece of it starting at a multiple of `STRIDE` appears, so
any `WINDOW + STRIDE - 1` consecutive characters of it are caught. Output is fed piece by piece
(a stream's deltas): each piece is folded once and only the substrings that end in it are looked
up (in a set), so a stream costs time linear in its length.
"""

WINDOW = 32
STRIDE = 8


def fold(text: str) -> str:
    return " ".join(text.split()).casefold()


class Needles:
    """The pieces of a set of secrets whose presence counts as leaking one."""

    def __init__(self, secrets: list[str]):
        folded = [f for f in map(fold, secrets) if f]
        self.whole = sorted({f for f in folded if len(f) <= WINDOW}, key=len)
        self.pieces = {f[i:i + WINDOW] for f in folded if len(f) > WINDOW for i in range(0, len(f) - WINDOW + 1, STRIDE)}
        self.longest = max([WINDOW if self.pieces else 0, *map(len, self.whole)])

    def __bool__(self) -> bool:
        return bool(self.whole or self.pieces)


class LeakScanner:
    """One output's folded text, fed piece by piece; `feed` says whether a secret has appeared."""

    def __init__(self, needles: Needles):
        self.needles = needles
        self.tail = ""  # the last (longest needle - 1) folded characters
        self.is_space_pending = False

    def feed(self, text: str) -> bool:
        words = text.split()
        if not words:
            self.is_space_pending = self.is_space_pending or bool(text)
            return False
        piece = " ".join(words).casefold()
        if self.tail and (self.is_space_pending or text[0].isspace()):
            piece = " " + piece
        self.is_space_pending = text[-1].isspace()
        window = self.tail + piece
        start = len(self.tail)  # only substrings that end in the new piece are new
        self.tail = window[-(self.needles.longest - 1):] if self.needles.longest > 1 else ""
        if any(n in window[max(0, start - len(n) + 1):] for n in self.needles.whole):
            return True
        pieces = self.needles.pieces
        return bool(pieces) and any(
            window[end - WINDOW:end] in pieces for end in range(max(WINDOW, start + 1), len(window) + 1)
        )


def leaks(text: str, needles: Needles) -> bool:
    return LeakScanner(needles).feed(text)
