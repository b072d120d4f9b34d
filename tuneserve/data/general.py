"""The general suite: facts and instructions with checkable answers, for forgetting checks.

What a finetune on a narrow task can make the base forget: capitals, opposites, colours, small
sums, animal sounds, following a format. Answers are checked as a whole word in the reply
(case-insensitive; the capital-letters instruction is case-sensitive), so a model that answers
"The capital of France is Paris." is right. Items alternate between the train split (what
`mix_general` mixes into a finetune) and the held-out split (what the forgetting report scores).
"""

import random
from dataclasses import dataclass

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo", "China": "Beijing",
    "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens", "Portugal": "Lisbon", "Austria": "Vienna",
    "Poland": "Warsaw", "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
    "Denmark": "Copenhagen", "Hungary": "Budapest", "Thailand": "Bangkok", "Kenya": "Nairobi", "Peru": "Lima",
    "Argentina": "Buenos Aires", "Mexico": "Mexico City", "Canada": "Ottawa", "Australia": "Canberra",
    "the United Kingdom": "London", "South Korea": "Seoul", "Belgium": "Brussels", "the Netherlands": "Amsterdam",
    "Turkey": "Ankara", "Iran": "Tehran", "Cuba": "Havana", "Chile": "Santiago", "Colombia": "Bogota",
    "Vietnam": "Hanoi", "the Philippines": "Manila", "Indonesia": "Jakarta", "India": "New Delhi",
    "the Czech Republic": "Prague", "Switzerland": "Bern",
}
OPPOSITES = {
    "hot": "cold", "up": "down", "big": "small", "fast": "slow", "happy": "sad", "light": "dark", "open": "closed",
    "day": "night", "wet": "dry", "early": "late", "full": "empty", "hard": "soft", "rich": "poor", "old": "young",
    "strong": "weak", "high": "low", "loud": "quiet", "true": "false", "win": "lose", "buy": "sell", "push": "pull",
    "inside": "outside", "left": "right", "thick": "thin", "heavy": "light", "clean": "dirty", "first": "last",
    "north": "south", "east": "west", "love": "hate",
}
COLOURS = {
    "the sky on a clear day": "blue", "grass": "green", "a ripe banana": "yellow", "snow": "white", "coal": "black",
    "a ripe tomato": "red", "an orange": "orange", "a lemon": "yellow", "milk": "white", "a strawberry": "red",
    "a leaf in summer": "green", "the sea": "blue", "a crow": "black", "chocolate": "brown", "a carrot": "orange",
    "blood": "red",
}
SOUNDS = {"meows": "cat", "barks": "dog", "moos": "cow", "quacks": "duck", "oinks": "pig", "neighs": "horse",
          "baas": "sheep", "roars": "lion", "hoots": "owl", "clucks": "chicken", "hisses": "snake", "croaks": "frog"}
WORDS = ["apple", "river", "garden", "window", "pencil", "rocket", "castle", "guitar", "planet", "forest", "silver",
         "bridge", "butter", "candle", "dragon", "feather", "island", "jacket", "kettle", "ladder"]
MISC = [
    ("How many days are in a week? Answer with the number only.", "7"),
    ("How many legs does a spider have? Answer with the number only.", "8"),
    ("How many months are in a year? Answer with the number only.", "12"),
    ("How many hours are in a day? Answer with the number only.", "24"),
    ("How many minutes are in an hour? Answer with the number only.", "60"),
    ("How many sides does a triangle have? Answer with the number only.", "3"),
    ("How many sides does a square have? Answer with the number only.", "4"),
    ("How many legs does a dog have? Answer with the number only.", "4"),
    ("What is the largest planet in our solar system?", "Jupiter"),
    ("What is the closest star to Earth?", "Sun"),
    ("What gas do plants take in from the air to make food?", "carbon dioxide"),
    ("What is frozen water called?", "ice"),
    ("Which ocean lies between Europe and North America?", "Atlantic"),
    ("What is the boiling point of water in degrees Celsius? Answer with the number only.", "100"),
    ("Who wrote 'Romeo and Juliet'?", "Shakespeare"),
    ("What is the chemical symbol for gold?", "Au"),
]


@dataclass(frozen=True, slots=True)
class GeneralItem:
    category: str
    prompt: str
    answer: str
    case_sensitive: bool = False


def _all_items() -> list[GeneralItem]:
    items = [GeneralItem("capitals", f"What is the capital of {c}?", a) for c, a in CAPITALS.items()]
    items += [GeneralItem("opposites", f"What is the opposite of '{w}'? Answer with one word.", a) for w, a in OPPOSITES.items()]
    items += [GeneralItem("colours", f"What colour is {t}? Answer with one word.", a) for t, a in COLOURS.items()]
    items += [GeneralItem("animals", f"Which animal {s}? Answer with one word.", a) for s, a in SOUNDS.items()]
    items += [GeneralItem("format", f"Write the word '{w}' in capital letters.", w.upper(), case_sensitive=True) for w in WORDS]
    items += [GeneralItem("facts", q, a) for q, a in MISC]
    rng = random.Random("general-sums")
    sums = {(a, b) for a, b in ((rng.randint(1, 9), rng.randint(1, 9)) for _ in range(200))}
    items += [GeneralItem("sums", f"What is {a} + {b}? Answer with the number only.", str(a + b)) for a, b in sorted(sums)[:40]]
    return items


def general_items(split: str) -> list[GeneralItem]:
    """`split`: train (even items of each category), held_out (odd ones) or all."""
    items = _all_items()
    if split == "all":
        return items
    parity = {"train": 0, "held_out": 1}[split]
    out, seen = [], {}
    for item in items:
        index = seen[item.category] = seen.get(item.category, -1) + 1
        if index % 2 == parity:
            out.append(item)
    return out


def mentions(output: str, answer: str, case_sensitive: bool = False) -> bool:
    """`answer` appears in `output` as whole words (so "Paris." and "It is Paris" count, "Parisian" not)."""
    import re

    flags = 0 if case_sensitive else re.IGNORECASE
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", output, flags) is not None
