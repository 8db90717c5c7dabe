"""The lineage graph's layout: base model -> trained experts -> merges -> merges of merges, in columns.

Pure functions over plain data (no torch, no catalog): view.py reads the catalog and hands the experts
here; the templates draw the result as inline SVG (rect, text, path, each node an <a> to its page).

    graph = lineage_graph("tiny-llama", [Item("qa@1"), Item("sum@1"), Item("qa-sum@1", ("qa@1", "sum@1"))])
    graph.nodes  # placed boxes: key, label, column, x, y, href; graph.edges: from -> to, as SVG paths

A node's depth is its column: 0 the base model, 1 an expert with no parents, else 1 + its deepest parent's
depth. At most `max_nodes` nodes are drawn; `left_out` says how many were not (merges and the parents they
need first, then the other experts, each by name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

MAX_NODES = 200
COLUMN_WIDTH = 250  # x distance between columns
NODE_WIDTH = 200
NODE_HEIGHT = 30
ROW_HEIGHT = 42  # y distance between nodes of a column
PAD = 12
HEADER = 28  # room above the first row for the column titles
LABEL_CHARS = 26  # longer labels are cut (with "…"); the node's <title> has all of it


@dataclass(frozen=True)
class Item:
    """One expert of the graph: its ref, the refs of its parents, its kind; `present` False for a parent
    named by a lineage row that is no longer in the catalog (drawn, not linked)."""

    ref: str
    parents: tuple[str, ...] = ()
    kind: str = "sparse"
    present: bool = True
    title: str = ""  # extra words for the node's tooltip (e.g. the task)
    own_base: bool = True  # trained on this graph's base model (False: a parent from another base)


@dataclass(frozen=True)
class Node:
    key: str
    label: str
    title: str
    column: int
    x: int
    y: int
    href: str | None
    role: str  # base | expert | merged | missing | self (the classes the stylesheet colours)
    width: int = NODE_WIDTH
    height: int = NODE_HEIGHT


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    path: str  # the SVG path's d: a cubic from the right edge of src to the left edge of dst


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    columns: list[dict[str, object]] = field(default_factory=list)  # {"x", "title"} per column drawn
    width: int = 0
    height: int = 0
    left_out: int = 0  # experts not drawn (over max_nodes)


def column_title(depth: int) -> str:
    # By depth, not by kind: an expert trained on top of a parent sits beside the merges (its box says its kind).
    return {0: "base model", 1: "trained on the base", 2: "made from those", 3: "made from those in turn"}.get(
        depth, f"depth {depth}")


def expert_href(ref: str) -> str:
    return "/_/experts/" + quote(ref, safe="@")


def base_href(base: str) -> str:
    return "/_/lineage?" + urlencode({"base": base})


def short(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def depths(parents: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Depth of every key of `parents` (and of every parent it names): 1 for no parents, else 1 + the
    deepest parent's. A cycle (which the catalog can't make: a parent exists before its child) is cut
    where it closes, so every key still gets a depth."""
    out: dict[str, int] = {}
    for start in parents:
        if start in out:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]  # (key, index of the next parent to visit)
        on_path = {start}
        while stack:
            key, i = stack[-1]
            mine = parents.get(key, ())
            if i < len(mine):
                stack[-1] = (key, i + 1)
                parent = mine[i]
                if parent not in out and parent not in on_path:
                    stack.append((parent, 0))
                    on_path.add(parent)
                continue
            stack.pop()
            on_path.discard(key)
            out[key] = 1 + max((out[p] for p in mine if p in out), default=0)
    return out


def choose(items: list[Item], max_nodes: int) -> tuple[list[Item], int]:
    """At most max_nodes items: every item with parents (by depth, then ref) and the parents each needs,
    then the others by ref. Returns (chosen, how many were left out)."""
    by_ref = {item.ref: item for item in items}
    depth = depths({item.ref: item.parents for item in items})
    chosen: dict[str, Item] = {}
    merged = sorted((i for i in items if i.parents), key=lambda i: (depth[i.ref], i.ref))
    for item in merged:
        wanted = [item] + [by_ref.get(p) or Item(p, present=False, kind="missing") for p in item.parents]
        new = [w for w in wanted if w.ref not in chosen]
        if len(chosen) + len(new) > max_nodes:
            continue
        for w in new:
            chosen[w.ref] = w
    for item in sorted(items, key=lambda i: i.ref):
        if len(chosen) >= max_nodes:
            break
        chosen.setdefault(item.ref, item)
    return list(chosen.values()), len({i.ref for i in items} - set(chosen))


def place(columns: list[list[tuple[str, str, str, str | None, str]]], links: list[tuple[str, str]],
          titles: list[str], left_out: int = 0) -> Graph:
    """Lay out given columns of nodes (key, label, title, href, role), each column's order kept as given
    except that nodes follow their parents' mean position (one pass, left to right: fewer crossings)."""
    graph = Graph(left_out=left_out)
    row_of: dict[str, float] = {}
    parents_of: dict[str, list[str]] = {}
    for src, dst in links:
        parents_of.setdefault(dst, []).append(src)
    placed: dict[str, Node] = {}
    for c, nodes in enumerate(columns):
        def weight(entry: tuple[str, str, str, str | None, str], index: int) -> tuple[float, int]:
            rows = [row_of[p] for p in parents_of.get(entry[0], []) if p in row_of]
            return (sum(rows) / len(rows) if rows else float(index), index)

        ordered = [e for _, e in sorted(((weight(e, i), e) for i, e in enumerate(nodes)), key=lambda t: t[0])]
        x = PAD + c * COLUMN_WIDTH
        graph.columns.append({"x": x, "title": titles[c]})
        for r, (key, label, title, href, role) in enumerate(ordered):
            row_of[key] = r
            node = Node(key, short(label), title or label, c, x, HEADER + PAD + r * ROW_HEIGHT, href, role)
            placed[key] = node
            graph.nodes.append(node)
    tallest = max((len(c) for c in columns), default=0)
    for src, dst in links:
        a, b = placed.get(src), placed.get(dst)
        if a is None or b is None or a.column >= b.column:
            continue
        graph.edges.append(Edge(src, dst, edge_path(a, b, tallest)))
    graph.width = PAD * 2 + max(len(columns) - 1, 0) * COLUMN_WIDTH + NODE_WIDTH
    graph.height = HEADER + PAD * 2 + max(tallest - 1, 0) * ROW_HEIGHT + NODE_HEIGHT
    return graph


def edge_path(a: Node, b: Node, rows: int) -> str:
    """The SVG path from a's right side to b's left side. Between neighbouring columns, one curve; an edge that
    skips columns never crosses a box: it curves into the free channel between two rows (every column's boxes
    sit on the same row grid), runs along it past the columns between, and curves into b."""
    x1, y1 = a.x + a.width, a.y + a.height // 2
    x2, y2 = b.x, b.y + b.height // 2
    if b.column - a.column == 1:
        mid = (x1 + x2) // 2
        return f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"
    gap = ROW_HEIGHT - NODE_HEIGHT
    top = HEADER + PAD - gap // 2  # the channel above the first row; channel r is r rows below it
    r = min(max(round(((y1 + y2) / 2 - top) / ROW_HEIGHT), 0), max(rows, 1))
    yc = top + r * ROW_HEIGHT
    bend = (COLUMN_WIDTH - NODE_WIDTH) // 2
    return (f"M{x1},{y1} C{x1 + bend},{y1} {x1 + bend},{yc} {x1 + 2 * bend},{yc} L{x2 - 2 * bend},{yc} "
            f"C{x2 - bend},{yc} {x2 - bend},{y2} {x2},{y2}")


def _role(item: Item) -> str:
    return "missing" if not item.present else "merged" if item.kind == "merged" else "expert"


def _entry(item: Item, role: str | None = None) -> tuple[str, str, str, str | None, str]:
    note = " (not in this catalog)" if not item.present else ""
    title = " · ".join(x for x in (item.ref + note, item.kind if item.present else "", item.title) if x)
    return (item.ref, item.ref, title, expert_href(item.ref) if item.present else None, role or _role(item))


def lineage_graph(base: str, items: list[Item], max_nodes: int = MAX_NODES, left_out: int = 0) -> Graph:
    """The graph of one base model: the base, then its experts by depth; an edge from the base to each
    expert without parents, and from each parent to its child. `left_out`: experts the caller did not even
    read (added to those this leaves out)."""
    chosen, dropped = choose(items, max(1, max_nodes - 1))  # the base is one of the nodes
    depth = depths({item.ref: item.parents for item in chosen})
    columns: list[list[tuple[str, str, str, str | None, str]]] = [[(
        "\0base", base, f"base model {base}", base_href(base), "base")]]
    for item in sorted(chosen, key=lambda i: i.ref):
        d = depth[item.ref]
        while len(columns) <= d:
            columns.append([])
        columns[d].append(_entry(item))
    links = [("\0base", item.ref) for item in chosen if not item.parents and item.present and item.own_base]
    links += [(p, item.ref) for item in chosen for p in item.parents]
    return place(columns, links, [column_title(d) for d in range(len(columns))], dropped + left_out)


def neighbourhood(me: Item, base: str, parents: list[Item], children: list[Item],
                  max_nodes: int = 40) -> Graph:
    """One expert's neighbourhood: its parents (or its base model, when it has none), itself, its children.
    At most max_nodes per column; the rest are counted in left_out."""
    left = [_entry(p) for p in parents[:max_nodes]] or [("\0base", base, f"base model {base}", base_href(base), "base")]
    right = [_entry(c) for c in children[:max_nodes]]
    columns = [left, [_entry(me, "self")]] + ([right] if right else [])
    links = [(key, me.ref) for key, *_ in left] + [(me.ref, key) for key, *_ in right]
    titles = ["parents" if parents else "base model", "this expert", "children"]
    dropped = max(0, len(parents) - max_nodes) + max(0, len(children) - max_nodes)
    return place(columns, links, titles[: len(columns)], dropped)
