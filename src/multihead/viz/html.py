"""One self-contained HTML page to explore attention: pick a layer and a head, hover a token to
see what it attends to, compare all heads of a layer side by side.

The page is a single file: inline CSS and JavaScript, the weights as inline JSON, drawn as SVG.
It loads nothing from anywhere (no CDN, no fonts, no network), so it works offline, from an
e-mail attachment or a CI artefact. Weights are rounded to ``decimals`` places to keep the file
small (a 64-token, 8-head, 6-module page is about a megabyte at 3 places).

What the page does:

* buttons choose the attention module ("layer") and the head; the choice is kept in the URL
  fragment (``#layer=1&head=2``), which also selects the initial view (add ``&query=3`` or
  ``&key=0`` to open with that token highlighted, as if hovered);
* the main heatmap draws each weight as the opacity of one cell (``fill-opacity`` = weight);
* hovering a query token shades every key token by the weight it receives, hovering a key
  shades the queries that look at it (self-attention: one sentence; cross-attention: target
  tokens on the left, source tokens on the right);
* a small-multiples strip shows every head of the chosen layer; clicking one selects it;
* ``#selftest`` (or ``?selftest=1``) makes the page click a head button itself, check that the
  drawing changed, and write the result into ``<pre id="selftest-result">`` -- a way for a
  headless browser to prove the page works (see ``tests/test_viz_browser.py``).
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path

from .._files import write_atomic
from .capture import AttentionMap

__all__ = ["attention_html", "page_data", "write_attention_html"]


def page_data(
    maps: Sequence[AttentionMap], *, title: str = "Attention", subtitle: str = "", decimals: int = 3
) -> dict[str, object]:
    """The JSON object the page is built from (also handy for other front ends).

    Example:
        >>> import torch
        >>> m = AttentionMap(name="a", kind="self", weights=torch.tensor([[[0.25, 0.75]]]),
        ...                  heads=(0,), query_tokens=("x",), key_tokens=("x", "y"))
        >>> page_data([m])["maps"][0]["weights"]
        [[[0.25, 0.75]]]
    """
    if isinstance(maps, AttentionMap) or not isinstance(maps, Sequence):
        raise TypeError(f"maps must be a sequence of AttentionMap, got {type(maps).__name__}")
    if not maps:
        raise ValueError("maps must hold at least one AttentionMap, got an empty sequence")
    if isinstance(decimals, bool) or not isinstance(decimals, int) or not 1 <= decimals <= 8:
        raise ValueError(f"decimals must be an int in [1, 8], got {decimals!r}")
    out = []
    for m in maps:
        if not isinstance(m, AttentionMap):
            raise TypeError(f"maps must hold AttentionMap objects, got {type(m).__name__}")
        weights = m.weights.detach().double().cpu().tolist()  # (h, q, Nk)
        out.append(
            {
                "name": m.name,
                "kind": m.kind,
                "heads": list(m.heads),
                "queries": list(m.query_tokens),
                "keys": list(m.key_tokens),
                "weights": [
                    [[round(v, decimals) for v in row] for row in head] for head in weights
                ],
            }
        )
    return {"title": title, "subtitle": subtitle, "maps": out}


def _inline_json(data: object) -> str:
    # Inside <script>, "</script>" or "<!--" in a token would end the block early; JSON allows
    # \u escapes for any character, so the text stays valid JSON and inert HTML.
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def attention_html(
    maps: Sequence[AttentionMap], *, title: str = "Attention", subtitle: str = "", decimals: int = 3
) -> str:
    """The page as a string. See the module docstring for what it shows.

    Args:
        maps: the modules to show (one "layer" button each), e.g. from
            :func:`~multihead.viz.capture.maps_from_record`.
        title: page heading.
        subtitle: a line under it (e.g. ``"Nov 22, 2026 -> 2026-11-22"``).
        decimals: places the weights are rounded to.

    Example:
        >>> import torch
        >>> m = AttentionMap(name="a", kind="self", weights=torch.eye(2)[None], heads=(0,),
        ...                  query_tokens=("x", "y"), key_tokens=("x", "y"))
        >>> page = attention_html([m], title="demo")
        >>> page.startswith("<!DOCTYPE html>"), "http" in page
        (True, False)
    """
    data = page_data(maps, title=title, subtitle=subtitle, decimals=decimals)
    return (
        _TEMPLATE.replace("@@TITLE@@", html.escape(title))
        .replace("@@CSS@@", _CSS)
        .replace("@@JS@@", _JS)
        .replace("@@DATA@@", _inline_json(data))
    )


def write_attention_html(
    maps: Sequence[AttentionMap],
    path: str | os.PathLike[str],
    *,
    title: str = "Attention",
    subtitle: str = "",
    decimals: int = 3,
) -> Path:
    """Write :func:`attention_html` to ``path`` atomically (temporary file, then rename).

    Example:
        >>> import tempfile, torch
        >>> m = AttentionMap(name="a", kind="self", weights=torch.eye(2)[None], heads=(0,),
        ...                  query_tokens=("x", "y"), key_tokens=("x", "y"))
        >>> write_attention_html([m], f"{tempfile.mkdtemp()}/a.html").suffix
        '.html'
    """
    page = attention_html(maps, title=title, subtitle=subtitle, decimals=decimals)
    return write_atomic(path, page.encode("utf-8"))


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@@TITLE@@</title>
<style>@@CSS@@</style>
</head>
<body>
<header><h1 id="title"></h1><p id="subtitle"></p></header>
<section class="controls">
  <div><span class="label">layer</span><span id="layer-buttons"></span></div>
  <div><span class="label">head</span><span id="head-buttons"></span></div>
</section>
<main>
  <section class="panel">
    <h2 id="view-title"></h2>
    <p class="hint">Hover a token: on the left, what it attends to; on the right, who attends
    to it. Cell opacity is the attention weight.</p>
    <div class="view">
      <div class="tokens">
        <div class="col"><div class="colhead" id="query-head"></div><div id="query-tokens"></div></div>
        <div class="col"><div class="colhead" id="key-head"></div><div id="key-tokens"></div></div>
      </div>
      <div id="heatmap"></div>
    </div>
    <p id="status">&nbsp;</p>
  </section>
  <section class="panel">
    <h2>All heads of this layer</h2>
    <p class="hint">Click a head to select it.</p>
    <div id="multiples"></div>
  </section>
</main>
<pre id="selftest-result" hidden></pre>
<svg id="svg-namespace" width="0" height="0" aria-hidden="true"></svg>
<script type="application/json" id="attention-data">@@DATA@@</script>
<script>@@JS@@</script>
</body>
</html>
"""

_CSS = """
:root { --ink: #1d2330; --muted: #667085; --accent: 31, 78, 156; --line: #d0d5dd; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink);
       margin: 0 auto; padding: 16px 24px; max-width: 1400px; }
h1 { font-size: 20px; margin: 0 0 2px; }
h2 { font-size: 15px; margin: 0 0 4px; }
#subtitle, .hint, #status { color: var(--muted); margin: 2px 0 8px; }
.controls div { margin: 6px 0; }
.label { display: inline-block; width: 44px; color: var(--muted); }
button { font: inherit; margin: 2px; padding: 3px 9px; border: 1px solid var(--line);
         background: #fff; border-radius: 4px; cursor: pointer; }
button.active { background: rgb(var(--accent)); border-color: rgb(var(--accent)); color: #fff; }
.panel { border: 1px solid var(--line); border-radius: 6px; padding: 12px; margin: 12px 0; }
.view { display: flex; gap: 28px; align-items: flex-start; flex-wrap: wrap; }
.tokens { display: flex; gap: 28px; }
.colhead { color: var(--muted); font-size: 12px; margin-bottom: 4px; }
.tok { font-family: ui-monospace, Menlo, Consolas, monospace; padding: 1px 6px; margin: 1px 0;
       border-radius: 3px; cursor: default; white-space: pre; border: 1px solid transparent; }
.tok.hovered { border-color: rgb(var(--accent)); }
#multiples { display: flex; flex-wrap: wrap; gap: 14px; }
.multiple { cursor: pointer; text-align: center; padding: 4px; border: 2px solid transparent;
            border-radius: 4px; }
.multiple.active { border-color: rgb(var(--accent)); }
svg text { font-family: ui-monospace, Menlo, Consolas, monospace; fill: var(--ink); }
"""

_JS = r"""
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("attention-data").textContent);
  // The SVG namespace is read from an inline <svg>, so the page holds no URL at all.
  const SVGNS = document.getElementById("svg-namespace").namespaceURI;
  const ACCENT = "rgb(31, 78, 156)";
  const state = { layer: 0, head: 0, hoverQuery: null, hoverKey: null };

  function el(tag, attrs, text) {
    const node = tag.startsWith("svg:")
      ? document.createElementNS(SVGNS, tag.slice(4))
      : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function show(token) { return token === "" ? "\u2205" : token.replace(/ /g, "\u2423"); }
  function current() { return DATA.maps[state.layer]; }

  function readHash() {
    const text = (location.hash || "").replace(/^#/, "") + "&" + location.search.replace(/^\?/, "");
    const params = new URLSearchParams(text);
    const layer = parseInt(params.get("layer"), 10);
    if (layer >= 0 && layer < DATA.maps.length) state.layer = layer;
    const head = parseInt(params.get("head"), 10);
    if (head >= 0 && head < current().heads.length) state.head = head;
    const query = parseInt(params.get("query"), 10);
    state.hoverQuery = query >= 0 && query < current().queries.length ? query : null;
    const key = parseInt(params.get("key"), 10);
    state.hoverKey = key >= 0 && key < current().keys.length ? key : null;
    return params.has("selftest");
  }
  function writeHash() {
    const hash = "#layer=" + state.layer + "&head=" + state.head;
    try { history.replaceState(null, "", hash); } catch (e) { /* some file:// setups refuse */ }
  }

  // A heatmap as SVG: one <rect> per weight, fill-opacity = weight (0 = white, 1 = accent).
  function heatmap(map, head, cell, withLabels, onCell) {
    const nq = map.queries.length, nk = map.keys.length;
    const font = Math.max(7, Math.min(13, cell * 0.8));
    // Room for the longest label: a monospace glyph is about 0.62 em wide.
    const longest = Math.max(...map.queries.concat(map.keys).map((t) => show(t).length));
    const pad = withLabels ? Math.max(24, Math.ceil(0.62 * font * longest) + 8) : 0;
    const svg = el("svg:svg", { width: pad + nk * cell + 1, height: pad + nq * cell + 1,
                                "data-layer": state.layer, "data-head": head });
    const rows = map.weights[head];
    for (let i = 0; i < nq; i++) {
      for (let j = 0; j < nk; j++) {
        const r = el("svg:rect", { x: pad + j * cell, y: pad + i * cell, width: cell,
                                   height: cell, fill: ACCENT, "fill-opacity": rows[i][j],
                                   "data-i": i, "data-j": j, class: "cell" });
        if (onCell) r.addEventListener("mouseenter", () => onCell(i, j));
        svg.appendChild(r);
      }
    }
    svg.appendChild(el("svg:rect", { x: pad, y: pad, width: nk * cell, height: nq * cell,
                                     fill: "none", stroke: "#d0d5dd" }));
    if (withLabels) {
      map.queries.forEach((t, i) => svg.appendChild(el("svg:text", {
        x: pad - 4, y: pad + (i + 0.5) * cell, "text-anchor": "end",
        "dominant-baseline": "central", "font-size": font }, show(t))));
      map.keys.forEach((t, j) => {
        const x = pad + (j + 0.5) * cell, y = pad - 4;
        svg.appendChild(el("svg:text", { x: x, y: y, "font-size": font,
          transform: "rotate(-90 " + x + " " + y + ")", "dominant-baseline": "central" }, show(t)));
      });
    }
    return svg;
  }

  function renderButtons() {
    const layers = document.getElementById("layer-buttons");
    layers.replaceChildren();
    DATA.maps.forEach((m, k) => {
      const b = el("button", { class: k === state.layer ? "active" : "", "data-layer": k,
                               title: m.kind + "-attention" }, m.name || "(module)");
      b.addEventListener("click", () => select(k, Math.min(state.head, m.heads.length - 1)));
      layers.appendChild(b);
    });
    const heads = document.getElementById("head-buttons");
    heads.replaceChildren();
    current().heads.forEach((h, k) => {
      const b = el("button", { class: k === state.head ? "active" : "", "data-head": k },
                   "head " + h);
      b.addEventListener("click", () => select(state.layer, k));
      heads.appendChild(b);
    });
  }

  function renderTokens() {
    const map = current();
    const cross = map.kind === "cross";
    document.getElementById("query-head").textContent = cross ? "target (queries)" : "queries";
    document.getElementById("key-head").textContent = cross ? "source (keys)" : "keys";
    const qBox = document.getElementById("query-tokens");
    const kBox = document.getElementById("key-tokens");
    qBox.replaceChildren();
    kBox.replaceChildren();
    map.queries.forEach((t, i) => {
      const s = el("div", { class: "tok query", "data-i": i }, show(t));
      s.addEventListener("mouseenter", () => hover(i, null));
      s.addEventListener("mouseleave", () => hover(null, null));
      qBox.appendChild(s);
    });
    map.keys.forEach((t, j) => {
      const s = el("div", { class: "tok key", "data-j": j }, show(t));
      s.addEventListener("mouseenter", () => hover(null, j));
      s.addEventListener("mouseleave", () => hover(null, null));
      kBox.appendChild(s);
    });
  }

  function shade(node, weight) {
    node.style.backgroundColor = weight === null ? "" : "rgba(31, 78, 156, " + weight + ")";
    node.style.color = weight !== null && weight > 0.55 ? "#fff" : "";
    node.dataset.weight = weight === null ? "" : String(weight);
  }

  // Hovering query i shades keys by w[i][j]; hovering key j shades queries by w[i][j].
  function hover(i, j) {
    state.hoverQuery = i;
    state.hoverKey = j;
    const w = current().weights[state.head];
    document.querySelectorAll("#query-tokens .tok").forEach((n, k) => {
      n.classList.toggle("hovered", k === i);
      shade(n, j !== null ? w[k][j] : null);
    });
    document.querySelectorAll("#key-tokens .tok").forEach((n, k) => {
      n.classList.toggle("hovered", k === j);
      shade(n, i !== null ? w[i][k] : null);
    });
    document.querySelectorAll("#heatmap rect.cell").forEach((r) => {
      const ri = +r.dataset.i, rj = +r.dataset.j;
      const on = (i !== null && ri === i) || (j !== null && rj === j);
      r.setAttribute("stroke", on ? "#f79009" : "none");
    });
    const map = current();
    const status = document.getElementById("status");
    if (i !== null) {
      const best = w[i].indexOf(Math.max(...w[i]));
      status.textContent = "\u201c" + show(map.queries[i]) + "\u201d attends most to \u201c" +
        show(map.keys[best]) + "\u201d (" + w[i][best].toFixed(3) + ")";
    } else if (j !== null) {
      const col = w.map((row) => row[j]);
      status.textContent = "\u201c" + show(map.keys[j]) + "\u201d receives " +
        col.reduce((a, b) => a + b, 0).toFixed(3) + " in total over " + col.length + " queries";
    } else {
      status.textContent = "\u00a0";
    }
  }

  function renderMain() {
    const map = current();
    const cell = Math.max(6, Math.min(28, Math.floor(480 / Math.max(map.queries.length,
                                                                        map.keys.length))));
    const box = document.getElementById("heatmap");
    box.replaceChildren(heatmap(map, state.head, cell, true, (i, j) => {
      const w = map.weights[state.head][i][j];
      document.getElementById("status").textContent = "\u201c" + show(map.queries[i]) +
        "\u201d \u2192 \u201c" + show(map.keys[j]) + "\u201d: " + w.toFixed(3);
    }));
    document.getElementById("view-title").textContent = (map.name || "(module)") + " \u00b7 " +
      map.kind + "-attention \u00b7 head " + map.heads[state.head];
  }

  function renderMultiples() {
    const map = current();
    const cell = Math.max(2, Math.min(10, Math.floor(160 / Math.max(map.queries.length,
                                                                      map.keys.length))));
    const box = document.getElementById("multiples");
    box.replaceChildren();
    map.heads.forEach((h, k) => {
      const wrap = el("div", { class: "multiple" + (k === state.head ? " active" : ""),
                               "data-head": k });
      wrap.appendChild(heatmap(map, k, cell, false, null));
      wrap.appendChild(el("div", {}, "head " + h));
      wrap.addEventListener("click", () => select(state.layer, k));
      box.appendChild(wrap);
    });
  }

  function select(layer, head) {
    state.layer = layer;
    state.head = head;
    writeHash();
    renderButtons();
    renderTokens();
    renderMain();
    renderMultiples();
    hover(null, null);
  }

  function drawn() {
    return Array.from(document.querySelectorAll("#heatmap rect.cell"))
      .map((r) => r.getAttribute("fill-opacity")).join(",");
  }

  // Drives the page like a user would (element.click(), a mouseenter) and reports in the DOM.
  function selftest() {
    const result = { layer: state.layer, checks: [] };
    const before = drawn();
    const heads = document.querySelectorAll("#head-buttons button");
    const target = heads.length - 1 === state.head ? 0 : heads.length - 1;
    result.head_before = state.head;
    heads[target].click();
    const after = drawn();
    result.head_after = state.head;
    result.checks.push({ name: "head click changes the heatmap", ok: before !== after &&
                         state.head === target });
    result.checks.push({ name: "clicked head button is active", ok:
      document.querySelector("#head-buttons button.active").dataset.head === String(target) });
    const q0 = document.querySelector("#query-tokens .tok");
    q0.dispatchEvent(new MouseEvent("mouseenter"));
    const shades = Array.from(document.querySelectorAll("#key-tokens .tok"))
      .map((n) => parseFloat(n.dataset.weight));
    const expected = current().weights[state.head][0];
    result.checks.push({ name: "hovering a query shades keys by its weights",
                         ok: shades.every((s, j) => Math.abs(s - expected[j]) < 1e-9) });
    q0.dispatchEvent(new MouseEvent("mouseleave"));
    result.ok = result.checks.every((c) => c.ok);
    const out = document.getElementById("selftest-result");
    out.textContent = JSON.stringify(result);
    out.hidden = false;
  }

  document.getElementById("title").textContent = DATA.title;
  document.getElementById("subtitle").textContent = DATA.subtitle;
  function start() {
    const wantSelftest = readHash();
    const pinned = [state.hoverQuery, state.hoverKey];
    select(state.layer, state.head);
    if (pinned[0] !== null || pinned[1] !== null) hover(pinned[0], pinned[1]);
    return wantSelftest;
  }
  const wantSelftest = start();
  window.addEventListener("hashchange", start);
  if (wantSelftest) selftest();
})();
"""
