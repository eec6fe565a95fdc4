"""MovieLens-100K as protocol events (read from a path; the data is never bundled).

``load(path)`` returns item events, user_attrs events and rate events, the
ratings in time order with ties in file order, as wire maps ready to publish.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_PATH = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ml-100k"

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western"]


@dataclass
class MovieLens:
    items: list[dict]
    users: list[dict]
    ratings: list[dict]

    def events(self) -> list[dict]:
        return self.items + self.users + self.ratings


def _lines(path: Path) -> list[str]:
    if not path.exists():
        raise FileNotFoundError(f"MovieLens file {path} not found: pass the ml-100k folder "
                                "(the one holding u.data, u.item, u.user)")
    return path.read_text(encoding="latin-1").splitlines()


def load(path: str | Path = DEFAULT_PATH) -> MovieLens:
    path = Path(path)
    items = []
    for line in _lines(path / "u.item"):
        parts = line.split("|")
        if len(parts) < 24:
            continue
        tags = [g for g, flag in zip(GENRES, parts[5:24]) if flag == "1" and g != "unknown"]
        year = parts[2][-4:] if parts[2] else ""
        items.append({"v": 1, "id": f"ml-item-{parts[0]}", "type": "item", "ts": 0.0,
                      "item": parts[0], "title": parts[1], "tags": tags,
                      "text": f"{parts[1]}. Genres: {', '.join(tags)}.",
                      "attrs": {"year": year} if year else {}})
    users = []
    for line in _lines(path / "u.user"):
        parts = line.split("|")
        if len(parts) < 5:
            continue
        users.append({"v": 1, "id": f"ml-user-{parts[0]}", "type": "user_attrs", "ts": 0.0,
                      "user": parts[0], "attrs": {"age": int(parts[1]), "gender": parts[2],
                                                  "occupation": parts[3], "zip": parts[4]}})
    rows = []
    for n, line in enumerate(_lines(path / "u.data")):
        parts = line.split("\t")
        if len(parts) < 4:
            continue
        rows.append((int(parts[3]), n, parts[0], parts[1], float(parts[2])))
    rows.sort()
    ratings = [{"v": 1, "id": f"ml-{u}-{i}-{ts}", "type": "rate", "ts": float(ts), "user": u,
                "item": i, "value": value} for ts, _, u, i, value in rows]
    return MovieLens(items, users, ratings)
