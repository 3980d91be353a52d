"""Prompt vocabularies: a template with named slots, a list of values per slot, and a sampler.

A vocabulary defines the Cartesian product of its slot values. Combination `k` of that product is
decoded by mixed-radix arithmetic, so sampling never materialises the product (the reference cat
vocabulary alone has 92,650 prompts). Image `i` of a job gets combination `perm_c(i mod N)` where
`perm_c` is a keyed pseudo-random permutation of [0, N) for cycle `c = i // N`, and its own seed
derived from (job seed, i). Everything about image `i` is therefore a pure function of (vocabulary,
job seed, i): batch size, chunking and resumes cannot change it.

A *weighted* vocabulary (per-value sampling weights, e.g. the next round of a selection) cannot keep
the without-replacement order of the product, whose every combination is equally likely. Image `i`
then draws each slot's value independently, with probability proportional to its weight, from a
uniform number hashed from (job seed, i, slot): still a pure function of (vocabulary, job seed, i).
Weights are written either as a slot given as an object ``{"breed": {"tabby": 3, "siamese": 1}}``
(the form a saved vocabulary row stores) or as a separate ``weights: {slot: {value: weight}}`` map
that names every value of the slot; both are validated (finite, >= 0, at least one > 0 per slot,
only values of the slot) and normalised to sum to 1 per slot.
"""

from __future__ import annotations

import hashlib
import json
import math
import string
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
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


def _tidy(value: str) -> str:
    return " ".join(value.split())


def _weight(where: str, weight: object) -> float:
    """A validated sampling weight: a finite number >= 0 (bools are not numbers here)."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ValueError(f"{where}: weight {weight!r} is not a number")
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"{where}: weight {weight!r} must be finite and >= 0")
    return float(weight)


def _weighted_values(name: str, values: dict) -> tuple[tuple[str, ...], dict[str, float]]:
    """A slot written as ``{value: weight}``: (values in given order, raw weights)."""
    weights: dict[str, float] = {}
    for value, w in values.items():
        if not isinstance(value, str):
            raise ValueError(f"slot '{name}': value {value!r} is not a string")
        tidy = _tidy(value)
        if not tidy:
            continue
        if tidy in weights:
            raise ValueError(f"slot '{name}': value {tidy!r} is weighted twice")
        weights[tidy] = _weight(f"slot '{name}' value {tidy!r}", w)
    if not weights:
        raise ValueError(f"slot '{name}' has an empty list of values")
    return tuple(weights), weights


def _normalised(name: str, weights: dict[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"slot '{name}': weights are all zero (at least one value must be drawable)")
    return {value: w / total for value, w in weights.items()}


def _clean_values(name: str, values: list[str]) -> tuple[str, ...]:
    """Strip values and drop blanks and duplicates (keeping first-seen order)."""
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise ValueError(f"slot '{name}': values must be a list of strings (or an object of value: weight)")
    cleaned: dict[str, None] = {}
    for value in values:
        if not isinstance(value, str):
            raise ValueError(f"slot '{name}': value {value!r} is not a string")
        value = _tidy(value)
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
    reference study's preposition list repeats 'at' and 'on'). Optional per-value sampling weights
    (see the module docstring) end up in ``weights``: {slot: {value: weight}}, summing to 1 per
    weighted slot; slots without weights are uniform.
    """

    template: str
    slots: dict[str, tuple[str, ...]]
    negative_prompt: str = ""
    weights: dict[str, dict[str, float]] | None = None
    names: tuple[str, ...] = field(init=False, repr=False)
    _cumulative: dict[str, list[float]] = field(init=False, repr=False, compare=False)

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
        cleaned: dict[str, tuple[str, ...]] = {}
        weights: dict[str, dict[str, float]] = {}
        for name in names:
            if isinstance(self.slots[name], dict):
                cleaned[name], weights[name] = _weighted_values(name, self.slots[name])
            else:
                cleaned[name] = _clean_values(name, self.slots[name])
        if self.weights is not None:
            weights = self._explicit_weights(cleaned, weights)
        object.__setattr__(self, "slots", cleaned)
        object.__setattr__(self, "names", tuple(names))
        object.__setattr__(self, "negative_prompt", " ".join((self.negative_prompt or "").split()))
        normalised = {name: _normalised(name, weights[name]) for name in names if name in weights}
        object.__setattr__(self, "weights", normalised or None)
        cumulative = {
            name: list(accumulate(normalised[name][v] for v in cleaned[name]))[:-1] for name in normalised
        }  # the last bound is implicit (1.0): float sums that end at 0.9999999 cannot run off the list
        object.__setattr__(self, "_cumulative", cumulative)

    def _explicit_weights(
        self, cleaned: dict[str, tuple[str, ...]], from_slots: dict[str, dict[str, float]]
    ) -> dict[str, dict[str, float]]:
        """Validate the ``weights`` map: known slots, every value of a weighted slot and no other."""
        if not isinstance(self.weights, dict):
            raise ValueError("weights must be an object mapping slot names to {value: weight}")
        out = dict(from_slots)
        for name, given in self.weights.items():
            if name not in cleaned:
                raise ValueError(f"weights: '{name}' is not a slot of the template")
            if name in from_slots:
                raise ValueError(f"weights: slot '{name}' already has weights in its slot object")
            if not isinstance(given, dict):
                raise ValueError(f"weights.{name}: must be an object mapping values to weights")
            tidy = {_tidy(v) if isinstance(v, str) else v: w for v, w in given.items()}
            unknown = [v for v in tidy if v not in cleaned[name]]
            if unknown:
                raise ValueError(f"weights.{name}: {unknown} are not values of slot '{name}'")
            missing = [v for v in cleaned[name] if v not in tidy]
            if missing:
                raise ValueError(f"weights.{name}: no weight for {missing} (name every value; 0 is allowed)")
            out[name] = {v: _weight(f"weights.{name} value {v!r}", tidy[v]) for v in cleaned[name]}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        """Build from `{"template", "slots", "negative_prompt"?}` (extra keys such as a description
        are ignored)."""
        if not isinstance(data, dict):
            raise ValueError("vocabulary must be an object with 'template' and 'slots'")
        for key in ("template", "slots"):
            if key not in data:
                raise ValueError(f"vocabulary: '{key}' is missing")
        return cls(data["template"], data["slots"], data.get("negative_prompt") or "", data.get("weights"))

    def to_dict(self) -> dict:
        """``{"template", "slots": {slot: [values]}, "negative_prompt"}`` plus ``"weights"`` when weighted."""
        out: dict = {
            "template": self.template,
            "slots": {name: list(values) for name, values in self.slots.items()},
            "negative_prompt": self.negative_prompt,
        }
        if self.weights:
            out["weights"] = {name: dict(w) for name, w in self.weights.items()}
        return out

    def stored_slots(self) -> dict[str, list[str] | dict[str, float]]:
        """Slots in the form a saved vocabulary row keeps (it has no weights column): a weighted slot
        as ``{value: weight}``, the others as lists. ``Vocabulary(template, stored_slots())`` round-trips."""
        weights = self.weights or {}
        return {name: dict(weights[name]) if name in weights else list(v) for name, v in self.slots.items()}

    def probability(self, slot: str, value: str) -> float:
        """Probability that an image of a weighted vocabulary draws ``value`` for ``slot``."""
        if self.weights and slot in self.weights:
            return self.weights[slot].get(value, 0.0)
        return 1.0 / len(self.slots[slot]) if value in self.slots[slot] else 0.0

    def _weighted_item(self, index: int, seed: int) -> PromptItem:
        """Image ``index`` of a weighted vocabulary: each slot drawn independently by inverse CDF of a
        uniform hashed from (seed, index, slot), so the draw depends on nothing else."""
        values: dict[str, str] = {}
        for name in self.names:
            digest = hashlib.sha256(f"rebalance-weighted:{seed}:{index}:{name}".encode()).digest()
            u = int.from_bytes(digest[:7], "big") / 2**56  # 56 random bits: uniform in [0, 1)
            options = self.slots[name]
            if name in self._cumulative:
                values[name] = options[bisect_right(self._cumulative[name], u)]
            else:
                values[name] = options[int(u * len(options))]
        return PromptItem(index, self.render(values), values, image_seed(seed, index))

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
        the prompts cycle, with new image seeds. A weighted vocabulary draws every slot by its weights
        instead (with replacement; ``shuffle`` does not apply)."""
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        if self.weights:
            return self._weighted_item(index, seed)
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
        if shuffle and count and not self.weights:
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
