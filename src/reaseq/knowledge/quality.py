"""Knowledge quality against ground-truth attributes (MovieLens genres and years): a hallucination proxy."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import polars as pl

from reaseq.knowledge.agents import not_generated
from reaseq.knowledge.records import FieldValue, KnowledgeRecord, TraceRecord

# Words that name each MovieLens genre in free text (lower case; matched as whole words).
GENRE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "Action": ("action",),
    "Adventure": ("adventure", "adventures", "adventurous"),
    "Animation": ("animation", "animated", "cartoon"),
    "Children's": ("children's", "children", "childrens", "kids", "family"),
    "Comedy": ("comedy", "comedies", "comedic", "funny", "humor", "humour"),
    "Crime": ("crime", "criminal", "gangster", "heist"),
    "Documentary": ("documentary",),
    "Drama": ("drama", "dramatic"),
    "Fantasy": ("fantasy", "magical"),
    "Film-Noir": ("film-noir", "noir"),
    "Horror": ("horror", "scary"),
    "Musical": ("musical",),
    "Mystery": ("mystery", "detective"),
    "Romance": ("romance", "romantic", "love story"),
    "Sci-Fi": ("sci-fi", "science fiction", "scifi", "sci fi", "space"),
    "Thriller": ("thriller", "suspense", "suspenseful"),
    "War": ("war",),
    "Western": ("western", "cowboy"),
}
_PATTERNS = {genre: re.compile(r"(?<![\w-])(" + "|".join(re.escape(w) for w in words) + r")(?![\w-])") for genre, words in GENRE_SYNONYMS.items()}
_YEAR = re.compile(r"(1[89]\d\d|20\d\d)(s|'s)?")
_SHORT_DECADE = re.compile(r"(?<!\d)'?(\d0)s\b")
GENRE_FIELD_HINTS = ("genre",)
YEAR_FIELD_HINTS = ("era", "year", "decade", "period")
QUALITY_METRICS = [
    "not_in_cache",
    "coverage",
    "genre_precision",
    "genre_recall",
    "genre_unmapped_rate",
    "year_precision",
    "year_recall",
    "valid_json_rate",
    "critic_revision_rate",
]


@dataclass(frozen=True)
class Truth:
    """Ground truth of one item."""

    genres: frozenset[str]
    year: int | None


def ground_truth(items: pl.DataFrame, item_ids: Iterable[str] | None = None) -> dict[str, Truth]:
    """Genres and year per item id from the prepared items table."""
    wanted = set(item_ids) if item_ids is not None else None
    out = {}
    for row in items.select("item_id", "genres", "year").iter_rows(named=True):
        if wanted is None or row["item_id"] in wanted:
            out[row["item_id"]] = Truth(frozenset(row["genres"] or []), row["year"])
    return out


def genres_in(text: str) -> set[str]:
    """MovieLens genres named in a piece of text."""
    lowered = text.lower().replace("’", "'")
    return {genre for genre, pattern in _PATTERNS.items() if pattern.search(lowered)}


def decades_in(text: str) -> set[int]:
    """Decades (1990 for '1995', '1990s' or "'90s") stated in a piece of text."""
    found = {int(m.group(1)) // 10 * 10 for m in _YEAR.finditer(text)}
    found |= {1900 + int(m.group(1)) for m in _SHORT_DECADE.finditer(text)}
    return found


def _field_text(fields: Mapping[str, FieldValue], hints: Sequence[str]) -> str | None:
    chosen = [value for name, value in fields.items() if any(h in name for h in hints)]
    if not chosen:
        return None
    return " ; ".join(v if isinstance(v, str) else " ; ".join(v) for v in chosen)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def score_source(records: Sequence[KnowledgeRecord], traces: Sequence[TraceRecord], truth: Mapping[str, Truth]) -> dict[str, float | None]:
    """Quality metrics of one knowledge source over the items in `truth`.

    Genres come from a field whose name contains 'genre' when there is one (generated records), else from
    the whole text (imported texts); years from an era/year field, else from the text.
    """
    by_id = {r.item_id: r for r in records if r.item_id in truth}
    ok = [r for r in by_id.values() if r.status == "ok"]
    hits = predicted = mentioned_true = unmapped = values = 0
    year_hits = year_stated = 0
    for record in ok:
        t = truth[record.item_id]
        genre_text = _field_text(record.fields, GENRE_FIELD_HINTS)
        if genre_text is not None:
            for value in (v for v in re.split(r" ; ", genre_text) if v.strip()):
                values += 1
                unmapped += not genres_in(value)
            named = genres_in(genre_text)
        else:
            named = genres_in(record.text)
        hits += len(named & t.genres)
        predicted += len(named)
        mentioned_true += len(t.genres)
        year_field = _field_text(record.fields, YEAR_FIELD_HINTS)
        year_text = year_field if year_field is not None else record.text
        decades = decades_in(year_text)
        if decades and t.year is not None:
            year_stated += 1
            year_hits += (t.year // 10 * 10) in decades
    steps = [s for trace in traces for s in trace.steps]
    attempts = sum(s.attempts for s in steps)
    valid = sum(s.output is not None for s in steps)
    critiqued = [trace for trace in traces if any(s.agent == "critic" for s in trace.steps)]
    revised = sum(any(s.revision for s in trace.steps) for trace in critiqued)
    confidences = [r.confidence for r in ok if r.confidence is not None]
    # Items a replay could not find: never generated, or (in caches written before failures were stored) generated
    # and failed. They are counted, and count against coverage.
    not_in_cache = sum(map(not_generated, by_id.values()))
    return {
        "items": float(len(truth)),
        "not_in_cache": float(not_in_cache),
        "coverage": len(ok) / len(truth) if truth else None,
        "genre_precision": _ratio(hits, predicted),
        "genre_recall": _ratio(hits, mentioned_true),
        "genre_unmapped_rate": _ratio(unmapped, values),
        "year_precision": _ratio(year_hits, year_stated),
        "year_recall": _ratio(year_hits, sum(truth[r.item_id].year is not None for r in ok)),
        "valid_json_rate": _ratio(valid, attempts),
        "critic_revision_rate": _ratio(revised, len(critiqued)),
        "mean_confidence": sum(confidences) / len(confidences) if confidences else None,
    }
