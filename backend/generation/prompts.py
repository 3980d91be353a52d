"""Prompt vocabularies: a template with named slots, a list of values per slot, and a sampler.

A vocabulary defines the Cartesian product of its slot values. Combination `k` of that product is
decoded by mixed-radix arithmetic, so sampling never materialises the product (the reference cat
vocabulary alone has 92,650 prompts). Image `i` of a job gets combination `perm_c(i mod N)` where
`perm_c` is a keyed pseudo-random permutation of [0, N) for cycle `c = i // N`, and its own seed
derived from (job seed, i). Everything about image `i` is therefore a pure function of (vocabulary,
job seed, i): batch size, chunking and resumes cannot change it.
"""

from __future__ import annotations

import hashlib
import json
import math
import string
from dataclasses import dataclass, field
from pathlib import Path

VOCABULARY_DIR = Path(__file__).parent / "vocabularies"
# 31 bits: fits a 32-bit INTEGER column on every database, stays exact in JSON/JavaScript, and is
# the range A1111-style tools show. Seeds only need to differ between images of one job.
MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class PromptItem:
    """One image to generate: its index in the job, prompt text, slot values and seed."""

    index: int
    prompt: str
    slots: dict[str, str]
    seed: int


def image_seed(job_seed: int, index: int) -> int:
    """Seed of image `index` in a job: a stable hash, identical on every machine and Python run."""
    digest = hashlib.sha256(f"rebalance-image:{job_seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & MAX_SEED


def _template_fields(template: str) -> list[str]:
    """Slot names used by `template`, in order of first use; rejects what `str.format` would
    interpret beyond plain named slots (positional fields, attributes, format specs)."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"template: {exc} (write a literal brace as '{{{{' or '}}}}')") from exc
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"template: '{{{name}}}' is not a plain slot name like {{breed}}")
        if name not in names:
            names.append(name)
    return names


def _clean_values(name: str, values: list[str]) -> tuple[str, ...]:
    """Strip values and drop blanks and duplicates (keeping first-seen order)."""
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise ValueError(f"slot '{name}': values must be a list of strings")
    cleaned: dict[str, None] = {}
    for value in values:
        if not isinstance(value, str):
            raise ValueError(f"slot '{name}': value {value!r} is not a string")
        value = " ".join(value.split())
        if value:
            cleaned[value] = None
    if not cleaned:
        raise ValueError(f"slot '{name}' has an empty list of values")
    return tuple(cleaned)


class _Permutation:
    """A keyed pseudo-random permutation of [0, n), evaluated one index at a time.

    A balanced Feistel network permutes [0, 4^k) >= n; indices that land outside [0, n) are walked
    through the network again ("cycle walking"), which stays a bijection on [0, n). O(1) memory
    for any n, unlike shuffling a list of n indices.
    """

    ROUNDS = 4

    def __init__(self, n: int, key: bytes) -> None:
        self.n = n
        self.half_bits = max(1, math.ceil(math.log2(max(n, 2)) / 2))
        self.mask = (1 << self.half_bits) - 1
        self.keys = [hashlib.sha256(key + bytes([r])).digest()[:16] for r in range(self.ROUNDS)]

    def _round(self, r: int, value: int) -> int:
        digest = hashlib.blake2b(value.to_bytes(8, "big"), key=self.keys[r], digest_size=8).digest()
        return int.from_bytes(digest, "big") & self.mask

    def _feistel(self, x: int) -> int:
        left, right = x >> self.half_bits, x & self.mask
        for r in range(self.ROUNDS):
            left, right = right, left ^ self._round(r, right)
        return (left << self.half_bits) | right

    def __call__(self, index: int) -> int:
        x = self._feistel(index)
        while x >= self.n:
            x = self._feistel(x)
        return x


@dataclass(frozen=True)
class Vocabulary:
    """A prompt template with named slots, e.g. `{breed} cat {preposition} the {furniture}`.

    Construction validates and normalises: every slot of the template needs a non-empty list, every
    list must be used by the template, and duplicate values inside a list are dropped (the
    reference study's preposition list repeats 'at' and 'on').
    """

    template: str
    slots: dict[str, tuple[str, ...]]
    negative_prompt: str = ""
    names: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.template, str) or not self.template.strip():
            raise ValueError("template is empty")
        if not isinstance(self.slots, dict):
            raise ValueError("slots must be an object mapping slot names to lists of values")
        names = _template_fields(self.template)
        if not names:
            raise ValueError("template has no slots: write at least one {name} and give it values")
        for name in names:
            if name not in self.slots:
                raise ValueError(f"slot '{name}' is in the template but has no list of values")
        for name in self.slots:
            if name not in names:
                raise ValueError(f"slot '{name}' has values but is not used in the template")
        cleaned = {name: _clean_values(name, self.slots[name]) for name in names}
        object.__setattr__(self, "slots", cleaned)
        object.__setattr__(self, "names", tuple(names))
        object.__setattr__(self, "negative_prompt", " ".join((self.negative_prompt or "").split()))

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        """Build from `{"template", "slots", "negative_prompt"?}` (extra keys such as a description
        are ignored)."""
        if not isinstance(data, dict):
            raise ValueError("vocabulary must be an object with 'template' and 'slots'")
        for key in ("template", "slots"):
            if key not in data:
                raise ValueError(f"vocabulary: '{key}' is missing")
        return cls(data["template"], data["slots"], data.get("negative_prompt") or "")

    def to_dict(self) -> dict:
        return {
            "template": self.template,
            "slots": {name: list(values) for name, values in self.slots.items()},
            "negative_prompt": self.negative_prompt,
        }

    def distinct_count(self) -> int:
        """Number of distinct prompts (size of the Cartesian product of the de-duplicated lists)."""
        return math.prod(len(values) for values in self.slots.values())

    def combination(self, k: int) -> dict[str, str]:
        """Slot values of combination `k` in [0, distinct_count()): mixed-radix decoding, last slot
        varying fastest (the order of `itertools.product`)."""
        values: dict[str, str] = {}
        for name in reversed(self.names):
            options = self.slots[name]
            k, digit = divmod(k, len(options))
            values[name] = options[digit]
        return {name: values[name] for name in self.names}

    def render(self, values: dict[str, str]) -> str:
        return self.template.format_map(values)

    def item(self, index: int, seed: int, shuffle: bool = True) -> PromptItem:
        """Image `index` of a job with `seed`. With `shuffle`, each pass over the product is a fresh
        pseudo-random order; without, the product is enumerated in order. Past `distinct_count()`
        the prompts cycle, with new image seeds."""
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        n = self.distinct_count()
        cycle, position = divmod(index, n)
        if shuffle:
            key = hashlib.sha256(f"rebalance-prompts:{seed}:{cycle}".encode()).digest()
            position = _Permutation(n, key)(position)
        values = self.combination(position)
        return PromptItem(index, self.render(values), values, image_seed(seed, index))

    def sample(self, count: int, seed: int, start: int = 0, shuffle: bool = True) -> list[PromptItem]:
        """Images `start .. start+count-1` of a job: combinations drawn without replacement
        until the product is exhausted, then cycling with new seeds."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if shuffle and count:
            n = self.distinct_count()
            # One permutation object per cycle touched, instead of re-deriving keys per item.
            perms: dict[int, _Permutation] = {}
            items = []
            for index in range(start, start + count):
                cycle, position = divmod(index, n)
                if cycle not in perms:
                    key = hashlib.sha256(f"rebalance-prompts:{seed}:{cycle}".encode()).digest()
                    perms[cycle] = _Permutation(n, key)
                values = self.combination(perms[cycle](position))
                items.append(PromptItem(index, self.render(values), values, image_seed(seed, index)))
            return items
        return [self.item(index, seed, shuffle) for index in range(start, start + count)]

    def preview(self, n: int = 10, seed: int = 0) -> list[str]:
        """The first `n` prompts a job with `seed` would use."""
        return [item.prompt for item in self.sample(min(n, self.distinct_count()), seed)]


GENERIC_VIEWS = [
    "a photo of",
    "a close-up photo of",
    "a cropped photo of",
    "a bright photo of",
    "a dark photo of",
    "a blurry photo of",
    "a low resolution photo of",
    "a good photo of",
]
GENERIC_PLACES = [
    "indoors",
    "outdoors",
    "in a field",
    "in a city street",
    "in a house",
    "in the snow",
    "at night",
    "in the sunlight",
    "on a white background",
    "in the grass",
]


def default_vocabulary(class_name: str) -> Vocabulary:
    """The built-in vocabulary for `class_name`: the reference study's for `cat`, a generic
    viewpoint x setting vocabulary for any other class."""
    path = VOCABULARY_DIR / f"{class_name.strip().lower()}.json"
    if class_name.strip() and path.parent == VOCABULARY_DIR and path.is_file():
        return Vocabulary.from_dict(json.loads(path.read_text()))
    label = " ".join(class_name.replace("_", " ").split()) or "object"
    label = label.replace("{", "{{").replace("}", "}}")  # braces in a class name are literal text
    article = "an" if label[0].lower() in "aeiou" else "a"
    return Vocabulary(
        template=f"{{view}} {article} {label} {{place}}",
        slots={"view": GENERIC_VIEWS, "place": GENERIC_PLACES},
        negative_prompt="text, watermark, cartoon, drawing",
    )
