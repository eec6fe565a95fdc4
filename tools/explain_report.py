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
                  "semantic": "#c44e52", "popularity": "#8172b3", "demographic": "#937860"}
MAX_CURVE_TAGS = 8
MAX_EVENT_ROWS = 100


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="interest explain",
                                description="explain a user's interests, optionally as HTML")
    p.add_argument("user")
    p.add_argument("--api", default=DEFAULT_API, help=f"api address (default {DEFAULT_API})")
    p.add_argument("--item", help="also explain this item's score and rank")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML report")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait per request")
    from interest.tools.keys import add_key_options  # noqa: PLC0415
    add_key_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from interest.engine.serving.client import Client, RequestError
    from interest.engine.errors import InterestError
    fields = {"user": args.user}
    if args.item:
        fields["item"] = args.item
    try:
        with Client(args.api, timeout=args.timeout, server_key=args.server_key,
                    client_key=args.client_key) as client:
            explain = client.call("explain", **fields)
            if not args.html:
                print(json.dumps(_plain(explain), indent=2, sort_keys=True))
                return 0
            interests = client.call("interests", user=args.user)
            recs = client.call("recommend", user=args.user, k=10)
    except RequestError as exc:
        print(f"interest explain: {exc.code}: {exc}", file=sys.stderr)
        return 1
    except InterestError as exc:
        print(f"interest explain: {exc}", file=sys.stderr)
        return 1
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
    fig.autofmt_xdate()
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
    fig.autofmt_xdate()
    return _png(fig)


def recommendations_figure(items: list[dict]) -> str | None:
    if not items:
        return None
    plt = _plt()
    names = []
    for row in items:
        for name in row.get("sources") or {}:
            if name not in names:
                names.append(name)
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(items) + 1.5))
    ys = list(range(len(items)))[::-1]
    for name in names:
        lefts = []
        widths = []
        for row in items:
            lefts.append(sum(max(v, 0.0) for n, v in (row.get("sources") or {}).items()
                             if names.index(n) < names.index(name)))
            widths.append(max(float((row.get("sources") or {}).get(name, 0.0)), 0.0))
        if any(widths):
            ax.barh(ys, widths, left=lefts, label=name,
                    color=SOURCE_COLOURS.get(name, None), edgecolor="white", linewidth=0.5)
    top = max((sum(max(v, 0.0) for v in (r.get("sources") or {}).values()) for r in items),
              default=0.0) or 1.0
    for y, row in zip(ys, items):
        total = sum(max(v, 0.0) for v in (row.get("sources") or {}).values())
        ax.text(total + 0.02 * top, y, _short(row.get("reason", ""), 70), va="center",
                fontsize=7)
    ax.set_yticks(ys)
    ax.set_yticklabels([_short(r["item"], 24) for r in items])
    ax.set_xlim(0, top * 2.6)
    ax.set_xlabel("contribution to the fused score")
    ax.set_title("Top recommendations: source contributions")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def item_figure(item: dict) -> str | None:
    sources = item.get("sources") or {}
    if not sources:
        return None
    plt = _plt()
    names = list(sources)
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.2))
    ax.barh(names, [float(sources[n]) for n in names],
            color=[SOURCE_COLOURS.get(n, "#999999") for n in names])
    ax.set_xlabel("contribution")
    ax.set_title(_short(f"Item {item.get('item')}: score by source", 80))
    return _png(fig)


# ------------------------------------------------------------------ html

CSS = """body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
font-size:0.9em;text-align:left;vertical-align:top}th{background:#f2f2f2}
.note{color:#666}img{max-width:100%}"""


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
    parts = [f"<h1>Interest report: {e(user)}</h1>"]
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
        parts.append(_table(["time", "type", "item", "weight", "tags"],
                            [[_fmt_ts(ev["ts"]), ev["type"], ev.get("item") or ev.get("query")
                              or "", f"{float(ev.get('weight') or 0):.3f}",
                              ", ".join(ev.get("tags") or [])] for ev in reversed(shown)]))
    else:
        parts.append("<p class='note'>No events.</p>")

    parts.append("<h2>Top-10 recommendations</h2>")
    items = _with_reasons(recs, explain)
    uri = recommendations_figure(items)
    if uri:
        parts.append(_img(uri, "top recommendations by source contribution"))
        parts.append(_table(["#", "item", "score", "reason"],
                            [[i + 1, r["item"], f"{float(r.get('score') or 0):.4f}",
                              r.get("reason", "")] for i, r in enumerate(items)]))
    else:
        parts.append("<p class='note'>The service has nothing to recommend yet.</p>")

    item = explain.get("item")
    if item:
        parts.append(f"<h2>Item {e(str(item.get('item')))}</h2>")
        parts.append(f"<p>Rank {e(str(item.get('rank')))}, score "
                     f"{float(item.get('score') or 0):.4f}, seen: {e(str(item.get('seen')))}. "
                     f"{e(str(item.get('reason') or ''))}</p>")
        uri = item_figure(item)
        if uri:
            parts.append(_img(uri, "item score by source"))
        cf = item.get("counterfactual")
        if cf:
            ev = cf["removed_event"]
            parts.append(f"<p>Without the user's strongest contributing event "
                         f"({e(str(ev.get('type')))} of {e(str(ev.get('item')))} at "
                         f"{e(_fmt_ts(ev.get('ts')))}, id {e(str(ev.get('id')))}; by "
                         f"{e(str(cf.get('basis')))}) the item would rank "
                         f"<b>{e(str(cf['rank_without']))}</b> instead of "
                         f"{e(str(cf['rank']))}.</p>")

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
        parts.append("<p class='note'>no model profile yet</p>")

    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Interest report: {e(user)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")


if __name__ == "__main__":
    sys.exit(main())
