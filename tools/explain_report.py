"""`interest explain USER [--api ADDR] [--item ITEM] [--html FILE]`.

Without ``--html``: print the service's explain reply as JSON. With ``--html``:
ask the running service for explain, interests and recommend (k=10) and write
one self-contained HTML file (images are base64 PNG data URIs drawn with
matplotlib's Agg backend; no external CSS, scripts, fonts or links) showing
the user's short- and long-term tag weights over time (recomputed from the
event timeline of the explain reply), the event timeline, the top-10
recommendations as stacked bars of source contributions with their reasons,
and the model's summaries over time.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import sys
from datetime import datetime, timezone
from types import SimpleNamespace

DEFAULT_API = "tcp://127.0.0.1:7101"
SOURCE_COLOURS = {"sequential": "#4c72b0", "collaborative": "#dd8452", "content": "#55a868",
                  "semantic": "#c44e52", "popularity": "#8172b3", "demographic": "#937860",
                  "ease": "#da8bc3"}
MAX_CURVE_TAGS = 8
MAX_EVENT_ROWS = 100


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="interest explain",
                                description="explain a user's interests, optionally as HTML")
    p.add_argument("user", help="the user id to explain")
    p.add_argument("--api", default=DEFAULT_API, help=f"api address (default {DEFAULT_API})")
    p.add_argument("--item", help="also explain this item's score and rank")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML report")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait per request")
    p.add_argument("--wait", type=float, default=2.0, metavar="SECONDS",
                   help="how long to wait for the service to answer at all (default 2)")
    from interest.tools.keys import add_key_options  # noqa: PLC0415
    add_key_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from interest.engine.serving.client import Client, RequestError
    from interest.engine.errors import DeadlineExceeded, InterestError
    fields = {"user": args.user}
    if args.item:
        fields["item"] = args.item
    try:
        with Client(args.api, timeout=args.timeout, connect_timeout=args.wait,
                    server_key=args.server_key, client_key=args.client_key) as client:
            explain = client.call("explain", **fields)
            if not args.html:
                print(json.dumps(_plain(explain), indent=2))     # keys in reply order
                return 0
            interests = client.call("interests", user=args.user)
            recs = client.call("recommend", user=args.user, k=10)
    except RequestError as exc:
        print(f"interest explain: {exc.code}: {exc}", file=sys.stderr)
        return 1
    except InterestError as exc:
        print(f"interest explain: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, DeadlineExceeded) else 2 if isinstance(exc, ValueError) else 1
    text = render(explain, interests, recs)
    with open(args.html, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(f"wrote {args.html}")
    return 0


def _plain(obj):
    """The reply as JSON-safe values (bytes as hex; no rid/ok noise)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items() if k not in ("rid",)}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).hex()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


# ------------------------------------------------------------------ data

def _decay(value: float, dt: float, half_life: float) -> float:
    return value * math.exp2(-max(dt, 0.0) / half_life)


def interest_curves(explain: dict, tags: list[str] | None = None) -> dict:
    """Short and long weights of ``tags`` after each timeline event, replaying the fold.

    Returns {"t": [ts...], "short": {tag: [...]}, "long": {tag: [...]}}; the
    last point equals the service's current weights (as of the last event).
    """
    hl = explain.get("half_lives") or {"short": 3600.0, "long": 2592000.0}
    events = explain.get("timeline") or []
    if tags is None:
        tags = [t["tag"] for t in explain.get("tags") or []][:MAX_CURVE_TAGS]
    cells: dict[str, list] = {}
    out = {"t": [], "short": {t: [] for t in tags}, "long": {t: [] for t in tags}}
    now = None
    for ev in events:
        ts = float(ev["ts"])
        now = ts if now is None else max(now, ts)
        weight = float(ev.get("weight") or 0.0)
        for tag in ev.get("tags") or ():
            cell = cells.get(tag)
            if cell is None:
                cells[tag] = [weight, weight, ts]
                continue
            dt = ts - cell[2]
            cell[0] = _decay(cell[0], dt, hl["short"]) + weight
            cell[1] = _decay(cell[1], dt, hl["long"]) + weight
            cell[2] = max(cell[2], ts)
        out["t"].append(now)
        for tag in tags:
            cell = cells.get(tag)
            if cell is None:
                out["short"][tag].append(0.0)
                out["long"][tag].append(0.0)
            else:
                out["short"][tag].append(_decay(cell[0], now - cell[2], hl["short"]))
                out["long"][tag].append(_decay(cell[1], now - cell[2], hl["long"]))
    return out


def _state_from(explain: dict):
    """A minimal state-like object (recent items) for reasons computed here."""
    recent = [[e["item"], e["type"], e["ts"], e.get("weight")]
              for e in explain.get("timeline") or [] if e.get("item") is not None]
    return SimpleNamespace(recent=recent[-50:], tags={})


def _with_reasons(recs: dict, explain: dict) -> list[dict]:
    known = {row["item"]: row.get("reason")
             for row in (explain.get("recommendations") or {}).get("items") or []}
    state = None
    items = []
    for row in recs.get("items") or []:
        text = known.get(row["item"])
        if text is None:
            from interest.engine.recommend.reasons import reason
            state = state or _state_from(explain)
            text = reason(row, None, state)
        items.append({**row, "reason": text})
    return items


# --------------------------------------------------------------- drawing

def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _x(ts_list):
    """Datetimes for epoch-like timestamps, raw seconds otherwise."""
    if ts_list and min(ts_list) > 1e8:
        return [datetime.fromtimestamp(t, timezone.utc) for t in ts_list], "time (UTC)"
    return list(ts_list), "event time (s)"


def _date_axis(ax, x) -> None:
    """Readable dates on a time axis (year, day and time only where they change)."""
    if x and isinstance(x[0], datetime):
        import matplotlib.dates as mdates
        locator = mdates.AutoDateLocator(maxticks=8)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _short(text: str, n: int = 60) -> str:
    text = str(text)
    return text if len(text) <= n else text[:n - 1] + "\u2026"


def curves_figure(explain: dict) -> str | None:
    curves = interest_curves(explain)
    if not curves["t"] or not curves["short"]:
        return None
    plt = _plt()
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    x, label = _x(curves["t"])
    for ax, kind in zip(axes, ("short", "long")):
        for tag, ys in curves[kind].items():
            ax.plot(x, ys, marker=".", label=_short(tag, 30))
        ax.set_ylabel(f"{kind}-term weight")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[0].set_title("Interest weights over time (top tags)")
    axes[1].set_xlabel(label)
    _date_axis(axes[1], x)
    return _png(fig)


def timeline_figure(explain: dict) -> str | None:
    events = explain.get("timeline") or []
    if not events:
        return None
    plt = _plt()
    types = sorted({e["type"] for e in events})
    row = {t: i for i, t in enumerate(types)}
    x, label = _x([float(e["ts"]) for e in events])
    weights = [float(e.get("weight") or 0.0) for e in events]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(types) + 1.6))
    ax.scatter(x, [row[e["type"]] for e in events],
               s=[20 + 25 * min(abs(w), 10) for w in weights],
               c=["#2a9d8f" if w >= 0 else "#e76f51" for w in weights], alpha=0.7)
    ax.set_yticks(range(len(types)))
    ax.set_yticklabels(types)
    ax.set_ylim(-0.7, len(types) - 0.3)
    ax.set_xlabel(label)
    ax.set_title("Event timeline (size: |weight|, red: negative)")
    ax.grid(alpha=0.3)
    _date_axis(ax, x)
    return _png(fig)


def recommendations_figure(items: list[dict]) -> str | None:
    """Stacked bars of each recommendation's positive source contributions, titles on the
    y axis; the x axis runs to the top score (reasons are in the table below)."""
    if not items:
        return None
    plt = _plt()
    names = []
    for row in items:
        for name, value in (row.get("sources") or {}).items():
            if name not in names and value > 0:
                names.append(name)
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(items) + 1.3))
    ys = list(range(len(items)))[::-1]
    lefts = [0.0] * len(items)
    for name in names:
        widths = [max(float((row.get("sources") or {}).get(name, 0.0)), 0.0) for row in items]
        ax.barh(ys, widths, left=lefts, label=name, color=SOURCE_COLOURS.get(name),
                edgecolor="white", linewidth=0.5)
        lefts = [a + b for a, b in zip(lefts, widths)]
    top = max(lefts, default=0.0) or 1.0
    for y, row, total in zip(ys, items, lefts):
        ax.text(total + 0.01 * top, y, f"{float(row.get('score') or 0):.3f}", va="center",
                fontsize=8)
    ax.set_yticks(ys)
    ax.set_yticklabels([_short(item_name(r), 42) for r in items], fontsize=9)
    ax.set_xlim(0, top * 1.1)
    ax.set_xlabel("contribution to the fused score (positive parts; the label is the score)")
    ax.set_title("Top recommendations: where each score comes from")
    if names:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="source",
                  title_fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def item_figure(item: dict) -> str | None:
    sources = item.get("sources") or {}
    if not sources:
        return None
    plt = _plt()
    names = sorted((n for n in sources if float(sources[n])), key=lambda n: float(sources[n]))
    zero = sorted(n for n in sources if not float(sources[n]))
    if not names:
        return None
    values = [float(sources[n]) for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.4))
    ax.barh(names, values, color=[SOURCE_COLOURS.get(n, "#999999") for n in names])
    low, high = min(values + [0.0]), max(values + [0.0])
    span = (high - low) or 1.0
    for y, value in enumerate(values):
        ax.text(value + (0.01 if value >= 0 else -0.01) * span, y, f"{value:.3f}",
                va="center", ha="left" if value >= 0 else "right", fontsize=8)
    ax.set_xlim(low - (0.15 * span if low < 0 else 0.0), high + 0.15 * span)
    ax.axvline(0, color="#666", linewidth=0.8)
    ax.set_xlabel("contribution to the fused score"
                  + (f"\n(nothing from {', '.join(zero)})" if zero else ""))
    ax.set_title(_short(f"{item_name(item)}: score by source", 90))
    return _png(fig)


# ------------------------------------------------------------------ words

VERBS = {"view": "viewed", "click": "clicked", "cart": "added to the cart",
         "purchase": "bought", "rate": "rated", "skip": "skipped", "dislike": "disliked"}


def item_name(row: dict) -> str:
    """'Babe (1995) (item 8)': the title first, the id after it; the id alone if untitled."""
    item = row.get("item")
    title = row.get("title")
    if item is None:
        return str(title or "")
    return f"{title} (item {item})" if title and title != item else f"item {item}"


def _number(value) -> str:
    return f"{float(value):g}"


def event_phrase(ev: dict) -> str:
    """What the user did, as words: 'rated "Babe (1995)" (item 8) 4', 'searched for "x"'."""
    etype = ev.get("type")
    if etype == "search":
        return f'searched for "{ev.get("query") or ""}"'
    if ev.get("item") is None:
        return str(etype)
    name = f'"{ev["title"]}" (item {ev["item"]})' if ev.get("title") else f"item {ev['item']}"
    text = f"{VERBS.get(etype, etype)} {name}"
    if ev.get("value") is not None:
        text += f" with a rating of {_number(ev['value'])}"
    return text


BASIS = {"item_tags": "it adds the most to this item's tags",
         "all_tags": "none of your events shares this item's tags; it adds the most to your "
                     "interests overall",
         "latest": "it is your most recent event, where the item-to-item sources start"}


def counterfactual_text(item: dict) -> str:
    """The counterfactual as sentences, for either direction of the rank change."""
    cf = item.get("counterfactual")
    if not cf:
        return "No event of yours bears on this item, so there is no counterfactual."
    ev = cf["removed_event"]
    basis = BASIS.get(cf.get("basis"), str(cf.get("basis")))
    shared = cf.get("shared_tags") or []
    if cf.get("basis") == "item_tags" and shared:
        basis += ": " + ", ".join(shared)
    rank, without = int(cf["rank"]), int(cf["rank_without"])
    head = (f"The event that matters most for this item: you {event_phrase(ev)} on "
            f"{_fmt_ts(ev.get('ts'))}; {basis}.")
    if without > rank:
        tail = (f"Without it this item would drop from rank {rank} to rank {without}: "
                f"that event is helping it.")
    elif without < rank:
        tail = (f"Without it this item would rise from rank {rank} to rank {without}: that "
                f"event lifts other items more than this one, so on balance it holds this "
                f"item back.")
    else:
        tail = (f"Without it this item would stay at rank {rank}: this one event does not "
                f"change where it ranks.")
    return f"{head} {tail}"


def seen_text(item: dict) -> str:
    if item.get("seen"):
        return ("You already have this item in your history, so it is not recommended to you "
                "again; the rank is where it would be among all items.")
    return "You have not interacted with this item yet."


def _titles(obj, out: dict | None = None) -> dict:
    """item -> title for every item the explain reply names."""
    out = {} if out is None else out
    if isinstance(obj, dict):
        if isinstance(obj.get("item"), str) and obj.get("title"):
            out.setdefault(obj["item"], obj["title"])
        for value in obj.values():
            _titles(value, out)
    elif isinstance(obj, list):
        for value in obj:
            _titles(value, out)
    return out


def _llm_note(interests: dict) -> str:
    llm = interests.get("llm") or {}
    reason = llm.get("reason")
    return f" ({reason})" if reason else ""


# ------------------------------------------------------------------ html

CSS = """body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
font-size:0.9em;text-align:left;vertical-align:top}th{background:#f2f2f2}
.note{color:#666}img{max-width:100%}td:first-child{white-space:nowrap}"""


def _fmt_ts(ts) -> str:
    if ts is None:
        return "-"
    ts = float(ts)
    if ts > 1e8:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{ts:g}"


def _table(headers: list[str], rows: list[list]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render(explain: dict, interests: dict, recs: dict) -> str:
    """The report as one self-contained HTML document."""
    e = html.escape
    user = str(explain.get("user", ""))
    n_events = int(explain.get("events") or 0)
    titles = _titles(explain)
    parts = [f"<h1>Interest report: user {e(user)}</h1>"]
    if n_events == 0:
        parts.append("<p><b>No events for this user yet</b> (unknown or new user): "
                     "no interests to show; the recommendations below are the cold-start "
                     "ones.</p>")
    else:
        parts.append(f"<p>{n_events} behaviour events, journal version "
                     f"{e(str(explain.get('version')))}, weights as of "
                     f"{e(_fmt_ts(explain.get('as_of')))}; strategy "
                     f"<b>{e(str(recs.get('strategy', '')))}</b>.</p>")
        if n_events < 5:
            parts.append("<p class='note'>Cold user: few events, the picture is thin.</p>")

    parts.append("<h2>Interests over time</h2>")
    uri = curves_figure(explain)
    if uri:
        parts.append(_img(uri, "short- and long-term interest weights over time"))
        if explain.get("timeline_truncated"):
            parts.append("<p class='note'>Only the newest events are in the reply; early "
                         "weights are approximate.</p>")
    else:
        parts.append("<p class='note'>No tagged events: no interest weights.</p>")
    tags = interests.get("tags") or []
    if tags:
        parts.append(_table(["tag", "short", "long", "total"],
                            [[t["tag"], f"{t['short']:.3f}", f"{t['long']:.3f}",
                              f"{t['weight']:.3f}"] for t in tags[:20]]))

    parts.append("<h2>Event timeline</h2>")
    uri = timeline_figure(explain)
    events = explain.get("timeline") or []
    if uri:
        parts.append(_img(uri, "event timeline"))
        shown = events[-MAX_EVENT_ROWS:]
        parts.append(f"<p class='note'>Newest {len(shown)} of {len(events)} events.</p>")
        parts.append(_table(["time", "what the user did", "weight", "tags"],
                            [[_fmt_ts(ev["ts"]), event_phrase(ev),
                              f"{float(ev.get('weight') or 0):.3f}",
                              ", ".join(ev.get("tags") or [])] for ev in reversed(shown)]))
    else:
        parts.append("<p class='note'>No events.</p>")

    parts.append("<h2>Top-10 recommendations</h2>")
    items = [{**row, "title": row.get("title") or titles.get(row["item"])}
             for row in _with_reasons(recs, explain)]
    uri = recommendations_figure(items)
    if uri:
        parts.append(_img(uri, "top recommendations by source contribution"))
        parts.append(_table(["#", "item", "score", "why"],
                            [[i + 1, item_name(r), f"{float(r.get('score') or 0):.4f}",
                              r.get("reason", "")] for i, r in enumerate(items)]))
    else:
        parts.append("<p class='note'>The service has nothing to recommend yet.</p>")

    item = explain.get("item")
    if item:
        parts.append(f"<h2>{e(item_name(item))}</h2>")
        parts.append(f"<p>Rank <b>{e(str(item.get('rank')))}</b> for this user, score "
                     f"{float(item.get('score') or 0):.4f}. {e(seen_text(item))}</p>")
        if item.get("reason"):
            parts.append(f"<p>Why: {e(str(item['reason']))}.</p>")
        uri = item_figure(item)
        if uri:
            parts.append(_img(uri, "item score by source"))
        parts.append(f"<p>{e(counterfactual_text(item))}</p>")

    parts.append("<h2>Model summaries over time</h2>")
    profiles = explain.get("profiles") or []
    if not profiles and explain.get("profile"):
        profiles = [explain["profile"]]
    if profiles:
        parts.append(_table(["time", "model", "summary", "tags"],
                            [[_fmt_ts(p.get("at")), p.get("model", ""), p.get("summary", ""),
                              ", ".join(str(t) for t in p.get("tags") or [])]
                             for p in reversed(profiles)]))
    else:
        parts.append(f"<p class='note'>no model profile yet{e(_llm_note(interests))}</p>")

    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Interest report: user {e(user)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")


if __name__ == "__main__":
    sys.exit(main())
