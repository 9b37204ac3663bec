"""A deployment's gazetteer: named places (name, lat, lon) to report by and to show on maps.

The file is CSV in UTF-8 with a header line naming its columns, in any order:
``name`` (required: the place's name, usually Chinese), ``lat`` and ``lon`` (required:
WGS84 degrees), ``name_en`` (optional: an English name, shown on the English page and
searched too) and ``rank`` (optional: 1 to 9, 1 the most prominent; on a busy map the
names of lower rank give way first; default 5). Lines starting with ``#`` and empty
lines are skipped. Every fault names the file, the line and what to fix: a bad file
stops start-up (dispatch/config.py) instead of leaving the control room without it.

Searching is by words: every word of the query must occur in the name or the English
name (case-insensitive); names that start with the query come first, then by rank.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MAX_PLACES", "Gazetteer", "Place"]

MAX_PLACES = 5000
MAX_FILE_BYTES = 2 * 1024 * 1024
_MAX_NAME = 100
_DEFAULT_RANK = 5


@dataclass(frozen=True, slots=True)
class Place:
    name: str
    lat: float
    lon: float
    name_en: str = ""
    rank: int = _DEFAULT_RANK
    line: int = 0  # where it is in the file, for error messages

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "name_en": self.name_en or None,
            "lat": self.lat,
            "lon": self.lon,
            "rank": self.rank,
        }


def _printable(text: str) -> bool:
    return not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)


def _words(text: str) -> list[str]:
    return text.casefold().split()


class Gazetteer:
    """Named places, searchable; ``places`` in the file's order."""

    __slots__ = ("_hay", "places")

    def __init__(self, places: tuple[Place, ...]) -> None:
        self.places = places
        # What a query is matched against: both names, folded, with and without spaces
        # (people type "小营巷12号" for "小营巷 12 号").
        self._hay = tuple(
            f"{p.name} {p.name_en}".casefold()
            + " "
            + f"{p.name}{p.name_en}".casefold().replace(" ", "")
            for p in places
        )

    def __len__(self) -> int:
        return len(self.places)

    @classmethod
    def from_csv(cls, path: str | Path) -> Gazetteer:
        source = str(path)
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(
                f"{source}: cannot read the gazetteer: {exc.strerror or exc}"
            ) from None
        if len(raw) > MAX_FILE_BYTES:
            raise ValueError(f"{source}: larger than {MAX_FILE_BYTES // 1024} KiB")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise ValueError(f"{source}: line {line}: not UTF-8 text") from None
        return cls.parse(text, source=source)

    @classmethod
    def parse(cls, text: str, *, source: str = "gazetteer") -> Gazetteer:
        """Read CSV text; ValueError("<source>: line N: <what is wrong>") on any fault."""
        rows = [
            (n, line)
            for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
        if not rows:
            raise ValueError(f"{source}: empty; the first line must be the header name,lat,lon")
        header_line, header_text = rows[0]
        header = [h.strip().lower() for h in next(csv.reader([header_text]))]
        for required in ("name", "lat", "lon"):
            if required not in header:
                raise ValueError(
                    f"{source}: line {header_line}: the header has no '{required}' column; "
                    "it must name the columns, e.g. name,name_en,lat,lon,rank"
                )
        unknown = [h for h in header if h not in ("name", "name_en", "lat", "lon", "rank")]
        if unknown:
            raise ValueError(
                f"{source}: line {header_line}: unknown column '{unknown[0]}'; the columns "
                "are name, lat, lon and optionally name_en and rank"
            )
        if len(set(header)) != len(header):
            raise ValueError(f"{source}: line {header_line}: a column is named twice")
        if len(rows) - 1 > MAX_PLACES:
            raise ValueError(f"{source}: at most {MAX_PLACES} places, not {len(rows) - 1}")
        places: list[Place] = []
        seen: dict[str, int] = {}
        for n, line in rows[1:]:
            try:
                cells = next(csv.reader(io.StringIO(line)))
            except csv.Error as exc:
                raise ValueError(f"{source}: line {n}: not CSV: {exc}") from None
            if len(cells) != len(header):
                raise ValueError(
                    f"{source}: line {n}: {len(cells)} values, but the header names "
                    f"{len(header)} columns ({','.join(header)}); put a name that holds a "
                    "comma in double quotes"
                )
            row = {h: c.strip() for h, c in zip(header, cells, strict=True)}
            places.append(_place(row, n, source, seen))
        return cls(tuple(places))

    def check(self, contains: Callable[[float, float], bool], *, source: str, area: str) -> None:
        """ValueError naming the first place that lies outside the service area."""
        for p in self.places:
            if not contains(p.lat, p.lon):
                raise ValueError(
                    f"{source}: line {p.line}: '{p.name}' ({p.lat}, {p.lon}) lies outside the "
                    f"service area ({area}); every place must lie inside it (WGS84 lat, lon)"
                )

    def search(self, query: str, limit: int) -> list[Place]:
        """The places matching every word of ``query``, best first, at most ``limit``."""
        words = _words(query)
        if not words or limit <= 0:
            return []
        whole = query.casefold().replace(" ", "")
        found: list[tuple[int, int, int, int, Place]] = []
        for order, (place, hay) in enumerate(zip(self.places, self._hay, strict=True)):
            if all(w in hay for w in words):
                starts = place.name.casefold().replace(" ", "").startswith(whole) or (
                    place.name_en.casefold().startswith(query.casefold().strip())
                )
                found.append((0 if starts else 1, place.rank, len(place.name), order, place))
        found.sort(key=lambda f: f[:4])
        return [f[4] for f in found[:limit]]


def _place(row: dict[str, str], n: int, source: str, seen: dict[str, int]) -> Place:
    where = f"{source}: line {n}"
    name = row["name"]
    if not name:
        raise ValueError(f"{where}: the name is empty")
    for what, text in (("name", name), ("name_en", row.get("name_en", ""))):
        if len(text) > _MAX_NAME or not _printable(text):
            raise ValueError(
                f"{where}: the {what} must be at most {_MAX_NAME} printable characters"
            )
    if name in seen:
        raise ValueError(f"{where}: '{name}' is named already on line {seen[name]}")
    seen[name] = n
    coords: list[float] = []
    for what, lo, hi in (("lat", -90.0, 90.0), ("lon", -180.0, 180.0)):
        try:
            value = float(row[what])
        except ValueError:
            raise ValueError(
                f"{where}: {what} '{row[what][:40]}' is not a number (WGS84 degrees, e.g. 30.2591)"
            ) from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise ValueError(f"{where}: {what} {row[what][:40]} is not from {lo:g} to {hi:g}")
        coords.append(value)
    rank = _DEFAULT_RANK
    if row.get("rank"):
        if not row["rank"].isdigit() or not 1 <= int(row["rank"]) <= 9:
            raise ValueError(
                f"{where}: rank '{row['rank'][:20]}' is not a whole number from 1 to 9"
            )
        rank = int(row["rank"])
    return Place(name, coords[0], coords[1], row.get("name_en", ""), rank, n)
