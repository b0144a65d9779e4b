"""A run's graph as an SVG, drawn on the server (no JavaScript library, no build step).

Layout: layers top-down, a node one layer below its lowest predecessor (the static graph is
acyclic; loops are ``Next`` jumps, drawn beside it), nodes ordered within a layer by where
their predecessors are (two barycentre sweeps: few crossings for the small graphs workflows
have). Nodes are rounded boxes coloured by state, with their visit count when they ran more
than once; conditional edges are dashed and labelled with the condition's name.

Every text drawn is escaped here; the caller passes redacted names.
"""

from __future__ import annotations

from html import escape
from typing import Any

from gecko_actors.ui.progress import GraphView, Progress

__all__ = ["COLOURS", "render_svg"]

#: Fill and stroke per node state.
COLOURS = {
    "pending": ("#f3f4f6", "#9ca3af"),
    "running": ("#dbeafe", "#2563eb"),
    "waiting": ("#fef3c7", "#d97706"),
    "sleeping": ("#ede9fe", "#7c3aed"),
    "done": ("#dcfce7", "#16a34a"),
    "failed": ("#fee2e2", "#dc2626"),
    "pruned": ("#ffffff", "#d1d5db"),
}
_W, _H = 160, 46  # a node's box
_GAP_X, _GAP_Y = 36, 58  # between boxes: room for an edge's label
_MARGIN = 16
_JUMP_LANE = 70  # room on the right for the Next jumps' arcs
_LABEL = 20  # characters of a node's name shown in its box (all of it in its tooltip)


def render_svg(view: GraphView, progress: Progress) -> str:
    """The SVG of ``view`` with each node in its state from ``progress``."""
    if not view.nodes:
        return _svg(200, 60, ['<text x="16" y="34" class="empty">no steps yet</text>'])
    layers = _layers(view)
    place = _positions(layers)
    width = max(x for x, _ in place.values()) + _W + _MARGIN + (_JUMP_LANE if progress.jumps else 0)
    height = max(y for _, y in place.values()) + _H + _MARGIN
    parts = [_DEFS]
    parts += [_edge(place, s, t, c) for s, t, c in view.edges]
    parts += [_jump(place, s, t, n) for (s, t), n in sorted(progress.jumps.items()) if s in place]
    parts += [_node(name, view, progress, *place[name]) for name in view.nodes]
    return _svg(width, height, parts)


def _svg(width: float, height: float, parts: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="run-graph" width="{width:.0f}" '
        f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-label="the run\'s graph">{"".join(parts)}</svg>'
    )


_DEFS = (
    "<defs>"
    '<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
    'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
    'fill="#6b7280"/></marker>'
    '<marker id="jump-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
    'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
    'fill="#7c3aed"/></marker>'
    "</defs>"
)


def _layers(view: GraphView) -> list[list[str]]:
    """The nodes by layer: each one below all its predecessors (Kahn's order); nodes on a
    cycle (a damaged record: the graph was validated acyclic) go in a last layer. Without
    recorded edges, one node per layer, in the order the steps first name them."""
    names = list(view.nodes)
    preds: dict[str, list[str]] = {n: [] for n in names}
    succs: dict[str, list[str]] = {n: [] for n in names}
    for source, target, _ in view.edges:
        if source != target and source not in preds[target]:
            preds[target].append(source)
            succs[source].append(target)
    if not view.edges:
        return [[name] for name in names]
    waiting = {n: len(preds[n]) for n in names}
    queue = [n for n in names if not preds[n]]
    depth = dict.fromkeys(queue, 0)
    placed: set[str] = set()
    while queue:
        name = queue.pop(0)
        placed.add(name)
        for target in succs[name]:
            depth[target] = max(depth.get(target, 0), depth[name] + 1)
            waiting[target] -= 1
            if waiting[target] == 0:
                queue.append(target)
    last = max((depth[n] for n in placed), default=-1) + 1
    layers: list[list[str]] = [[] for _ in range(last + 1)]
    for name in names:
        layers[depth[name] if name in placed else last].append(name)
    return _ordered([layer for layer in layers if layer], preds)


def _ordered(layers: list[list[str]], preds: dict[str, list[str]]) -> list[list[str]]:
    """Each layer sorted by the mean position of its nodes' predecessors (stable: a node
    without predecessors above keeps its place)."""
    for _ in range(2):
        index: dict[str, float] = {}
        for layer in layers:
            keys = []
            for i, name in enumerate(layer):
                above = [index[p] for p in preds[name] if p in index]
                keys.append((sum(above) / len(above) if above else float(i), i))
            order = sorted(range(len(layer)), key=lambda i: keys[i])
            layer[:] = [layer[i] for i in order]
            index.update({name: float(i) for i, name in enumerate(layer)})
    return layers


def _positions(layers: list[list[str]]) -> dict[str, tuple[float, float]]:
    """Each node's top-left corner: layers top-down, each centred on the widest."""
    widest = max(len(layer) for layer in layers)
    place: dict[str, tuple[float, float]] = {}
    for row, layer in enumerate(layers):
        offset = (widest - len(layer)) * (_W + _GAP_X) / 2
        for col, name in enumerate(layer):
            place[name] = (_MARGIN + offset + col * (_W + _GAP_X), _MARGIN + row * (_H + _GAP_Y))
    return place


def _edge(
    place: dict[str, tuple[float, float]], source: str, target: str, condition: str | None
) -> str:
    (x1, y1), (x2, y2) = place[source], place[target]
    ax, ay, bx, by = x1 + _W / 2, y1 + _H, x2 + _W / 2, y2
    bend = max(abs(by - ay) / 2, 20)
    path = (
        f"M{ax:.1f},{ay:.1f} C{ax:.1f},{ay + bend:.1f} {bx:.1f},{by - bend:.1f} {bx:.1f},{by:.1f}"
    )
    dashed = ' stroke-dasharray="6 4"' if condition else ""
    kind = "edge conditional" if condition else "edge"
    found = [
        f'<g class="{kind}" data-source="{escape(source)}" data-target="{escape(target)}">'
        f'<path d="{path}" fill="none" stroke="#6b7280" stroke-width="1.5"{dashed} '
        'marker-end="url(#arrow)"/>'
    ]
    if condition:
        mx, my = (ax + bx) / 2, (ay + by) / 2
        short = condition.rsplit(".", 1)[-1]  # "build.<locals>.is_ok": is_ok (all in the title)
        found.append(
            f'<text x="{mx:.1f}" y="{my + 4:.1f}" text-anchor="middle" class="edge-label">'
            f"<title>when {escape(condition)}</title>{escape(_clip(short, 24))}</text>"
        )
    return "".join(found) + "</g>"


def _jump(place: dict[str, tuple[float, float]], source: str, target: str, times: int) -> str:
    """A ``Next`` jump the run took: an arc on the right, from the jumping node to its
    target (a loop, usually back up)."""
    if target not in place:
        return ""
    (x1, y1), (x2, y2) = place[source], place[target]
    ax, ay, bx, by = x1 + _W, y1 + _H / 2, x2 + _W, y2 + _H / 2
    reach = _JUMP_LANE - 12 if source != target else 40
    if source == target:
        ay, by = y1 + _H / 3, y1 + 2 * _H / 3
    path = (
        f"M{ax:.1f},{ay:.1f} C{ax + reach:.1f},{ay:.1f} {bx + reach:.1f},{by:.1f} {bx:.1f},{by:.1f}"
    )
    label = "Next" if times == 1 else f"Next &#215;{times}"
    return (
        f'<g class="jump" data-source="{escape(source)}" data-target="{escape(target)}">'
        f'<path d="{path}" fill="none" stroke="#7c3aed" stroke-width="1.5" '
        'stroke-dasharray="2 3" marker-end="url(#jump-arrow)"/>'
        f'<text x="{max(ax, bx) + reach * 0.75:.1f}" y="{(ay + by) / 2 + 4:.1f}" '
        f'text-anchor="middle" class="jump-label">{label}</text></g>'
    )


def _node(name: str, view: GraphView, progress: Progress, x: float, y: float) -> str:
    state = progress.states.get(name, "pending")
    fill, stroke = COLOURS.get(state, COLOURS["pending"])
    visits = progress.visits.get(name, 0)
    info: dict[str, Any] = view.nodes[name]
    kind = str(info.get("kind") or "")
    kind += " · map" if info.get("fan_out") else ""
    latest = name == progress.latest
    width = 3 if state in ("waiting", "running", "failed") or latest else 1.5
    dash = ' stroke-dasharray="4 3"' if state == "pruned" else ""
    classes = f"node state-{state}" + (" latest" if latest else "")
    classes += " entry" if name == view.entry else ""
    title = (
        f"{name}: {state}"
        + (f", {visits} visit{'s' * (visits > 1)}" if visits else "")
        + (f" ({kind})" if kind else "")
    )
    found = [
        f'<g class="{classes}" data-node="{escape(name)}" data-state="{state}" '
        f'data-visits="{visits}" transform="translate({x:.1f},{y:.1f})">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{_W}" height="{_H}" rx="10" ry="10" fill="{fill}" stroke="{stroke}" '
        f'stroke-width="{width}"{dash}/>',
        f'<text x="{_W / 2}" y="20" text-anchor="middle" class="node-name">'
        f"{escape(_clip(name, _LABEL))}</text>",
    ]
    found.append(
        f'<text x="{_W / 2}" y="37" text-anchor="middle" class="node-kind">'
        f"{escape(f'{kind} · {state}' if kind else state)}</text>"
    )
    if visits > 1:  # a loop went through it: say how often
        found.append(
            f'<g class="visits"><rect x="{_W - 30}" y="-9" width="36" height="18" rx="9" '
            f'fill="{stroke}"/><text x="{_W - 12}" y="4" text-anchor="middle" '
            f'class="visit-count" fill="#ffffff">&#215;{visits}</text></g>'
        )
    return "".join(found) + "</g>"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
