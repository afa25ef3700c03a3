// The Explore map: a plotly.js WebGL scatter whose hover preview (thumbnail + metadata) is drawn here,
// in the browser, from files the app serves statically; clicks and lasso/box selections go back to
// Python as trigger values. Streamlit calls the default export again on every data change with the
// same parentElement, so the plot is created once per element and then updated with Plotly.react and a
// fixed uirevision: zoom and pan survive changes of selection, neighbours and highlight.

const INSTANCES = new WeakMap();
const RED = "#e8412c";
const BLUE = "#1f6feb";
const PURPLE = "#8250df"; // edits (what if): their results and the links to their parents
// How each kind of edit link is drawn: a path through results (labels at its points) or a plain connector.
const LINK_STYLES = {
  interpolate: { width: 2.5, dash: "", labels: true },
  steer: { width: 2.5, dash: "", labels: true },
  regenerate: { width: 2, dash: "5 3", labels: true },
  patch: { width: 2, dash: "5 3", labels: true },
  set: { width: 1, dash: "2 3", labels: false },
};
const JSON_CACHE = new Map(); // url -> Promise<object>, a few recent views only
const JSON_CACHE_SIZE = 12;
let plotlyPromise = null;

function loadPlotly(url) {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!plotlyPromise) {
    plotlyPromise = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = url;
      script.async = true;
      script.onload = () => resolve(window.Plotly);
      script.onerror = () => {
        plotlyPromise = null;
        reject(new Error(`could not load plotly.js from ${url}`));
      };
      document.head.appendChild(script);
    });
  }
  return plotlyPromise;
}

function fetchJSON(url) {
  if (!url) return Promise.resolve(null);
  let promise = JSON_CACHE.get(url);
  if (!promise) {
    promise = fetch(url, { credentials: "same-origin" }).then((response) => {
      if (!response.ok) throw new Error(`${response.status} fetching ${url}`);
      return response.json();
    });
    promise.catch(() => JSON_CACHE.delete(url));
    JSON_CACHE.set(url, promise);
    while (JSON_CACHE.size > JSON_CACHE_SIZE) JSON_CACHE.delete(JSON_CACHE.keys().next().value);
  }
  return promise;
}

// A point of an all-steps map is "<sample id>@<step>"; its preview is its sample's thumbnail.
function sampleOf(id) {
  const at = id.lastIndexOf("@");
  return at > 0 && /^\d+$/.test(id.slice(at + 1)) ? id.slice(0, at) : id;
}

// Thumbnail file names: the sample id itself when it is URL- and file-safe, else its base64url form
// (app/static_files.py names the files the same way).
const SAFE_ID = /^[A-Za-z0-9._-]+$/;
function thumbName(id) {
  if (SAFE_ID.test(id)) return id;
  const bytes = new TextEncoder().encode(id);
  let binary = "";
  bytes.forEach((b) => (binary += String.fromCharCode(b)));
  return "b64-" + btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function cssVar(element, name, fallback) {
  const value = getComputedStyle(element).getPropertyValue(name).trim();
  return value || fallback;
}

const DARK_VIRIDIS = [[0, "#7b6fd0"], [0.25, "#3e8fc9"], [0.5, "#21a685"], [0.75, "#7ad151"], [1, "#fde725"]];

function isDark(color) {
  const hex = /^#([0-9a-f]{6})$/i.exec(color);
  const rgb = hex ? [0, 2, 4].map((i) => parseInt(hex[1].slice(i, i + 2), 16)) : (color.match(/\d+(\.\d+)?/g) || []).slice(0, 3).map(Number);
  if (rgb.length < 3) return false;
  return 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2] < 96;
}

function fieldValue(field, i) {
  if (!field) return null;
  const value = field.codes ? field.values[field.codes[i]] : field.values[i];
  return value === undefined ? null : value;
}

function escapeHTML(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// The legend's order of a category colouring: as sent when the colouring is ordered (steps, classes, runs as
// chosen), else the largest group first.
function legendOrder(color) {
  const codes = color.names.map((_, code) => code);
  return color.ordered ? codes : codes.sort((a, b) => color.counts[b] - color.counts[a]);
}

class MapView {
  constructor(root) {
    this.root = root;
    this.wrap = root.querySelector(".dmv-wrap");
    this.plot = root.querySelector(".dmv-plot");
    this.tip = root.querySelector(".dmv-tip");
    this.legend = root.querySelector(".dmv-legend");
    this.status = root.querySelector(".dmv-status");
    this.rings = root.querySelector(".dmv-rings");
    this.seq = 0;
    this.points = null; // {ids, x, y}
    this.pointsUrl = null;
    this.index = null; // Map id -> row
    this.meta = null;
    this.metaUrl = null;
    this.color = null;
    this.hidden = new Set(); // legend entries switched off
    this.traceIds = []; // per trace: array of sample ids by point number
    this.handlersAttached = false;
    this.lastPng = null;
    this.hoverId = null;
    this.setTrigger = () => {};
    this.register();
  }

  register() {
    window.dmvMap = this; // handle for the browser tests and the benchmark
  }

  unregister() {
    if (window.dmvMap === this) window.dmvMap = undefined;
  }

  async update(data) {
    const seq = ++this.seq;
    this.data = data;
    this.wrap.style.height = `${data.height || 620}px`;
    this.wrap.classList.toggle("dmv-busy", Boolean(data.busy)); // the previous map while a new one computes
    try {
      const [Plotly, points, color] = await Promise.all([
        loadPlotly(data.plotly_url),
        fetchJSON(data.points_url),
        fetchJSON(data.color_url),
      ]);
      if (seq !== this.seq) return; // a newer update superseded this one
      if (points !== this.points) {
        this.points = points;
        this.pointsUrl = data.points_url;
        this.index = new Map(points.ids.map((id, i) => [id, i]));
        this.hidden.clear();
      }
      if (color !== this.color) {
        this.color = color;
        this.hidden.clear();
      }
      this.renderLegend();
      this.render(Plotly);
      this.status.textContent = "";
      this.status.hidden = true;
      this.wrap.dataset.ready = "1";
      this.wrap.dataset.revision = data.revision;
      this.wrap.dataset.points = String(points.ids.length);
      this.wrap.dataset.selected = data.selected || "";
      if (data.png_nonce && data.png_nonce !== this.lastPng) {
        if (this.lastPng !== null) this.downloadPng();  // not on the first draw of a session
        this.lastPng = data.png_nonce;
      } else if (this.lastPng === null) {
        this.lastPng = data.png_nonce || 0;
      }
      // Per-point text is fetched once the map is drawn, not before: the map never waits for it.
      if (data.meta_url !== this.metaUrl) {
        this.metaUrl = data.meta_url;
        this.meta = null;
        fetchJSON(data.meta_url).then((meta) => {
          if (this.metaUrl === data.meta_url) {
            this.meta = meta;
            if (this.hoverId !== null) this.showTip(this.hoverId, null);
          }
        }, () => {});
      }
    } catch (error) {
      if (seq !== this.seq) return;
      this.status.hidden = false;
      this.status.textContent = `The map could not be drawn: ${error.message}`;
      this.wrap.dataset.error = error.message;
    }
  }

  theme() {
    const bg = cssVar(this.wrap, "--st-background-color", "#ffffff");
    return {
      text: cssVar(this.wrap, "--st-text-color", "#31333f"),
      bg,
      // Viridis starts at a near-black purple that vanishes on a dark background: lift its low end there
      scale: isDark(bg) ? DARK_VIRIDIS : "Viridis",
      secondary: cssVar(this.wrap, "--st-secondary-background-color", "#f0f2f6"),
      border: cssVar(this.wrap, "--st-border-color", "rgba(49,51,63,0.2)"),
      font: cssVar(this.wrap, "--st-font", "sans-serif"),
    };
  }

  // The per-point colour array, rebuilt only when the colouring or the hidden legend entries change: the
  // same array object lets Plotly.react skip re-uploading 50,000 colours on a selection change.
  baseColors() {
    const color = this.color;
    const n = this.points.ids.length;
    if (!color || color.kind !== "category") return null;
    const sig = [...this.hidden].sort().join(",");
    if (this._colors && this._colors.color === color && this._colors.points === this.points && this._colors.sig === sig) {
      return this._colors.out;
    }
    const out = new Array(n);
    for (let i = 0; i < n; i++) {
      const code = color.codes[i];
      out[i] = this.hidden.has(code) ? "rgba(0,0,0,0)" : color.colors[code];
    }
    this._colors = { color, points: this.points, sig, out };
    return out;
  }

  overlay(ids, marker, name) {
    const xs = [];
    const ys = [];
    const kept = [];
    for (const id of ids || []) {
      const i = this.index.get(id);
      if (i === undefined) continue;
      xs.push(this.points.x[i]);
      ys.push(this.points.y[i]);
      kept.push(id);
    }
    return { trace: { type: "scattergl", mode: "markers", x: xs, y: ys, marker, name, hoverinfo: "none", showlegend: false }, ids: kept };
  }

  // Everything plotly draws: the points (and the search/filter highlight). Redrawn only when one of its
  // inputs changes; a change of selection or neighbours only moves the SVG rings (drawRings), so a click
  // on a 50,000-point map costs no plotly recalculation.
  render(Plotly, force = false) {
    const data = this.data;
    const th = this.theme();
    const highlight = Array.isArray(data.highlight) && data.highlight.length > 0 ? data.highlight : null;
    const sig = [this.pointsUrl, data.color_url, [...this.hidden].sort().join(","), highlight ? highlight.join(",") : "",
      data.point_size, data.revision, th.text, th.font, this.plot.clientWidth, data.height].join("|");
    if (!force && sig === this.figureSig) {
      this.drawRings();
      return;
    }
    this.figureSig = sig;
    const { traces, ids } = this.figure(th, highlight);
    this.traceIds = ids;
    Plotly.react(this.plot, traces, this.layout(th), this.config()).then(() => this.drawRings());
    if (!this.handlersAttached) this.attachHandlers();
  }

  figure(th, highlight, withRings = false) {
    const data = this.data;
    const size = data.point_size || 5;
    const baseMarker = { size, opacity: highlight ? 0.18 : 0.85, line: { width: 0 } };
    const color = this.color;
    if (color && color.kind === "numeric") {
      Object.assign(baseMarker, {
        color: color.values,
        colorscale: th.scale,
        cmin: color.min,
        cmax: color.max,
        showscale: true,
        colorbar: { title: { text: color.title, font: { color: th.text } }, thickness: 12, len: 0.6, tickfont: { color: th.text }, outlinewidth: 0 },
      });
    } else {
      baseMarker.color = this.baseColors() || th.text;
    }
    const traces = [{ type: "scattergl", mode: "markers", x: this.points.x, y: this.points.y, marker: baseMarker, hoverinfo: "none", name: "samples", showlegend: false }];
    const ids = [this.points.ids];
    const add = ({ trace, ids: kept }) => {
      traces.push(trace);
      ids.push(kept);
    };
    if (highlight) {
      const hl = this.overlay(highlight, { size: size + 1, color: [], line: { width: 1, color: th.text } }, "matches");
      const colors = this.baseColors();
      hl.trace.marker.color = hl.ids.map((id) => (colors ? colors[this.index.get(id)] : th.text));
      if (color && color.kind === "numeric") {
        hl.trace.marker.color = hl.ids.map((id) => color.values[this.index.get(id)]);
        Object.assign(hl.trace.marker, { colorscale: th.scale, cmin: color.min, cmax: color.max });
      }
      add(hl);
    }
    if (withRings) {  // for the PNG: the trajectory and the rings as traces, so that the image shows them
      const traj = this.trajectoryPoints();
      if (traj.length > 1) {
        traces.push({ type: "scattergl", mode: "lines+markers+text", x: traj.map((p) => p.x), y: traj.map((p) => p.y), text: traj.map((p) => p.label),
          textposition: "top right", textfont: { color: th.text, size: 10 }, line: { color: BLUE, width: 2 }, marker: { size: 4, color: BLUE },
          hoverinfo: "none", showlegend: false, name: "trajectory" });
        ids.push(traj.map((p) => p.id));
      }
      for (const link of this.linkPoints()) {
        const style = LINK_STYLES[link.kind] || LINK_STYLES.patch;
        traces.push({ type: "scattergl", mode: style.labels ? "lines+text" : "lines", x: link.points.map((p) => p.x), y: link.points.map((p) => p.y),
          text: link.points.map((p) => p.label), textposition: "top right", textfont: { color: th.text, size: 10 },
          line: { color: PURPLE, width: style.width, dash: style.dash ? "dash" : "solid" }, hoverinfo: "none", showlegend: false, name: "edits" });
        ids.push(link.points.map((p) => p.id));
      }
      add(this.overlay(data.edited, { size: size + 5, symbol: "diamond-open", color: PURPLE, line: { width: 2, color: PURPLE } }, "edited"));
      add(this.overlay(data.knn, { size: size + 9, symbol: "circle-open", color: RED, line: { width: 1.5, color: RED } }, "neighbours"));
      add(this.overlay(data.manual, { size: size + 11, symbol: "circle-open", color: RED, line: { width: 3.5, color: RED } }, "manual"));
      add(this.overlay(data.selected ? [data.selected] : [], { size: size + 7, color: BLUE, line: { width: 2, color: "#ffffff" } }, "selected"));
    }
    return { traces, ids };
  }

  layout(th) {
    const axis = { visible: false, showgrid: false, zeroline: false, automargin: false };
    return {
      uirevision: this.data.revision,
      margin: { l: 8, r: 8, t: 8, b: 8 },
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      font: { color: th.text, family: th.font },
      xaxis: axis,
      yaxis: { ...axis, scaleanchor: "x", scaleratio: 1 },
      dragmode: "pan",
      hovermode: "closest",
      hoverdistance: 12,
      showlegend: false,
      modebar: { bgcolor: "rgba(0,0,0,0)", color: th.text, activecolor: BLUE, orientation: "v" },
    };
  }

  config() {
    return {
      displaylogo: false,
      showSendToCloud: false,  // nothing leaves the server
      showEditInChartStudio: false,
      scrollZoom: true,
      responsive: true,
      doubleClick: "reset",
      modeBarButtonsToRemove: ["autoScale2d", "toggleSpikelines", "hoverClosestCartesian", "hoverCompareCartesian", "toImage"],
      modeBarButtonsToAdd: [{ name: "Download the map as PNG", icon: window.Plotly.Icons.camera, click: () => this.downloadPng() }],
    };
  }

  // The selected sample's points across the steps (all-steps maps), in step order: {id, x, y, label}.
  trajectoryPoints() {
    const t = this.data.trajectory;
    const out = [];
    if (!t || !Array.isArray(t.ids)) return out;
    t.ids.forEach((id, k) => {
      const i = this.index.get(id);
      if (i !== undefined) out.push({ id, x: this.points.x[i], y: this.points.y[i], label: t.labels ? t.labels[k] : String(k) });
    });
    return out;
  }

  // The edit links (what if), each {kind, points: [{id, x, y, label}]} with at least two points on the map.
  linkPoints() {
    const out = [];
    for (const link of this.data.links || []) {
      const points = [];
      (link.ids || []).forEach((id, k) => {
        const i = this.index.get(id);
        if (i !== undefined) points.push({ id, x: this.points.x[i], y: this.points.y[i], label: link.labels ? String(link.labels[k] ?? "") : "" });
      });
      if (points.length > 1) out.push({ kind: link.kind, points });
    }
    return out;
  }

  // The selected point (blue), its k nearest neighbours (thin red rings) and manual neighbours (thick red
  // rings), drawn in an SVG layer over the WebGL canvas at the points' current screen positions.
  // The SVG layer of the rings sized to the plot, clipped to the rectangle (x, y, w, h); null w/h: the plot's.
  fitRingLayer(x, y, w, h) {
    const svg = this.rings;
    const pw = this.plot.clientWidth;
    const ph = this.plot.clientHeight;
    svg.setAttribute("width", pw);
    svg.setAttribute("height", ph);
    svg.setAttribute("viewBox", `0 0 ${pw} ${ph}`);
    const clip = svg.querySelector("clipPath rect");
    clip.setAttribute("x", x);
    clip.setAttribute("y", y);
    clip.setAttribute("width", w ?? pw);
    clip.setAttribute("height", h ?? ph);
    return svg;
  }

  drawRings() {
    const full = this.plot._fullLayout;
    if (!full || !this.points) return;
    const xa = full.xaxis;
    const ya = full.yaxis;
    const svg = this.fitRingLayer(xa._offset, ya._offset, xa._length, ya._length);
    const r = (this.data.point_size || 5) / 2;
    const items = [];
    // the trajectory first (under the rings): a line through the sample's steps, a small label at each
    const traj = this.trajectoryPoints().map((p) => ({ ...p, cx: xa._offset + xa.l2p(p.x), cy: ya._offset + ya.l2p(p.y) }));
    if (traj.length > 1) {
      const pts = traj.map((p) => `${p.cx.toFixed(1)},${p.cy.toFixed(1)}`).join(" ");
      items.push(`<polyline class="dmv-trajectory" points="${pts}" fill="none" stroke="${BLUE}" stroke-width="2" stroke-opacity="0.85" stroke-linejoin="round"/>`);
      for (const p of traj) {
        items.push(`<circle class="dmv-traj-point" cx="${p.cx.toFixed(1)}" cy="${p.cy.toFixed(1)}" r="2.5" fill="${BLUE}"/>`);
        items.push(`<text class="dmv-traj-label" x="${(p.cx + 6).toFixed(1)}" y="${(p.cy - 6).toFixed(1)}">${escapeHTML(p.label)}</text>`);
      }
    }
    this.wrap.dataset.trajectory = String(traj.length > 1 ? traj.length : 0);
    // edits: a path through an interpolation's frames or a steering series by alpha, a dashed line from a
    // parent to its result, thin dotted spokes from a patch result to its set; results as purple diamonds
    const px = (p) => ({ ...p, cx: xa._offset + xa.l2p(p.x), cy: ya._offset + ya.l2p(p.y) });
    const drawn = {};
    for (const link of this.linkPoints()) {
      const style = LINK_STYLES[link.kind] || LINK_STYLES.patch;
      const pts = link.points.map(px);
      const dash = style.dash ? ` stroke-dasharray="${style.dash}"` : "";
      items.push(`<polyline class="dmv-edit dmv-edit-${escapeHTML(link.kind)}" points="${pts.map((p) => `${p.cx.toFixed(1)},${p.cy.toFixed(1)}`).join(" ")}" fill="none" stroke="${PURPLE}" stroke-width="${style.width}" stroke-opacity="0.9" stroke-linejoin="round"${dash}/>`);
      if (style.labels) {
        for (const p of pts) {
          if (p.label) items.push(`<text class="dmv-traj-label dmv-edit-label" x="${(p.cx + 6).toFixed(1)}" y="${(p.cy - 6).toFixed(1)}">${escapeHTML(p.label)}</text>`);
        }
      }
      drawn[link.kind] = (drawn[link.kind] || 0) + 1;
    }
    this.wrap.dataset.editLinks = Object.keys(drawn).sort().map((k) => `${k}:${drawn[k]}`).join(",");
    let edited = 0;
    for (const id of this.data.edited || []) {
      const i = this.index.get(id);
      if (i === undefined) continue;
      const p = px({ x: this.points.x[i], y: this.points.y[i] });
      const d = r + 4;
      items.push(`<path class="dmv-edit-point" data-id="${escapeHTML(id)}" d="M${p.cx.toFixed(1)},${(p.cy - d).toFixed(1)} l${d},${d} l${-d},${d} l${-d},${-d} z" fill="none" stroke="${PURPLE}" stroke-width="2"/>`);
      edited += 1;
    }
    this.wrap.dataset.edited = String(edited);
    const ring = (id, cls, radius, extra) => {
      const i = this.index.get(id);
      if (i === undefined) return;
      const cx = xa._offset + xa.l2p(this.points.x[i]);
      const cy = ya._offset + ya.l2p(this.points.y[i]);
      items.push(`<circle class="${cls}" data-id="${escapeHTML(id)}" cx="${cx.toFixed(1)}" cy="${cy.toFixed(1)}" r="${radius}" ${extra}/>`);
    };
    for (const id of this.data.knn || []) ring(id, "dmv-ring-knn", r + 4.5, `fill="none" stroke="${RED}" stroke-width="1.5"`);
    for (const id of this.data.manual || []) ring(id, "dmv-ring-manual", r + 5.5, `fill="none" stroke="${RED}" stroke-width="3.5"`);
    if (this.data.selected) ring(this.data.selected, "dmv-ring-selected", r + 3.5, `fill="${BLUE}" stroke="#ffffff" stroke-width="2"`);
    svg.querySelector("g").innerHTML = items.join("");
  }

  // The figure of the PNG export: the map as shown (zoom included) with the selection drawn as traces, a
  // title (the view, then the colouring) above it and, beside it, the legend of the classes shown (or the
  // colour bar) and of the selection's marks.
  pngFigure() {
    const th = this.theme();
    const highlight = Array.isArray(this.data.highlight) && this.data.highlight.length > 0 ? this.data.highlight : null;
    const { traces } = this.figure(th, highlight, true);
    const names = { matches: "search / filter matches", trajectory: "trajectory", edited: "edit results", neighbours: "k nearest neighbours", manual: "manual neighbours", selected: "selected" };
    for (const trace of traces.slice(1)) {
      if (names[trace.name] && trace.x.length) Object.assign(trace, { showlegend: true, name: names[trace.name], legendgroup: "marks" });
    }
    const color = this.color;
    let legendWidth = 0;
    if (color && color.kind === "category") {
      const shown = legendOrder(color).filter((code) => !this.hidden.has(code));
      const rows = Math.max(4, Math.floor((this.plot.clientHeight - 120) / 19));
      const listed = shown.slice(0, shown.length > rows ? rows - 1 : rows);
      const entries = listed.map((code) => ({ name: `${color.names[code]} (${color.counts[code]})`, color: color.colors[code] }));
      if (shown.length > listed.length) entries.push({ name: `… ${shown.length - listed.length} more`, color: "rgba(0,0,0,0)" });
      entries.forEach((e, k) => traces.splice(1 + k, 0, { type: "scattergl", mode: "markers", x: [null], y: [null], name: e.name, showlegend: true,
        legendgroup: "classes", hoverinfo: "none", marker: { size: 9, color: e.color } }));
      const longest = Math.max(...entries.map((e) => e.name.length), color.title.length);
      legendWidth = Math.min(320, Math.max(150, 40 + 6.5 * longest));
    } else if (traces.some((t) => t.showlegend)) {
      legendWidth = 170;
    }
    const layout = this.layout(th);
    const full = this.plot._fullLayout;
    layout.xaxis = { ...layout.xaxis, range: full.xaxis.range.slice(), autorange: false };
    layout.yaxis = { ...layout.yaxis, range: full.yaxis.range.slice(), autorange: false };
    layout.paper_bgcolor = th.bg;
    layout.plot_bgcolor = th.bg;
    const title = [this.data.title, color && color.title ? `colour: ${color.title}` : null].filter(Boolean).join(" · ");
    layout.title = { text: escapeHTML(title || this.data.filename || "map"), x: 0.01, xanchor: "left", y: 0.985, yanchor: "top", font: { size: 14, color: th.text } };
    layout.showlegend = legendWidth > 0;
    const numeric = color && color.kind === "numeric";
    const colorbarRoom = numeric ? 80 : 0;  // the colour bar sits right of the plot; the legend right of it
    layout.legend = { x: 1 + (colorbarRoom + 8) / Math.max(1, this.plot.clientWidth - 16), xanchor: "left", y: 1, yanchor: "top", font: { color: th.text, size: 11 }, itemclick: false, tracegroupgap: 10,
      title: { text: color && color.kind === "category" ? escapeHTML(color.title) : "", font: { color: th.text } } };
    layout.margin = { l: 8, r: 8 + legendWidth + colorbarRoom, t: 44, b: 8 };
    const width = this.plot.clientWidth + legendWidth + colorbarRoom;
    const height = this.plot.clientHeight + 36;
    return { data: traces, layout, width, height };
  }

  downloadPng() {
    const { data, layout, width, height } = this.pngFigure();
    return window.Plotly.downloadImage({ data, layout }, { format: "png", filename: this.data.filename || "map", scale: 2, width, height });
  }

  idOf(point) {
    const ids = this.traceIds[point.curveNumber];
    return ids ? ids[point.pointNumber] : undefined;
  }

  attachHandlers() {
    this.handlersAttached = true;
    const plot = this.plot;
    plot.on("plotly_hover", (event) => {
      const point = event.points && event.points[0];
      if (!point) return;
      const id = this.idOf(point);
      if (id === undefined) return;
      const i = this.index.get(id);
      if (this.color && this.color.kind === "category" && this.hidden.has(this.color.codes[i])) return;
      this.showTip(id, event.event, point);
    });
    plot.on("plotly_unhover", () => this.hideTip());
    plot.on("plotly_click", (event) => {
      const point = event.points && event.points[0];
      if (!point) return;
      const id = this.idOf(point);
      if (id !== undefined) this.setTrigger("click", { id, t: Date.now() });
    });
    plot.on("plotly_selected", (event) => {
      if (!event) return;
      const ids = [];
      const seen = new Set();
      for (const point of event.points || []) {
        const id = this.idOf(point);
        if (id !== undefined && !seen.has(id)) {
          seen.add(id);
          ids.push(id);
        }
      }
      this.setTrigger("select", { ids, t: Date.now() });
    });
    plot.on("plotly_deselect", () => this.setTrigger("select", { ids: [], t: Date.now() }));
    plot.on("plotly_relayout", () => {
      this.hideTip();
      this.drawRings();
    });
    plot.on("plotly_relayouting", () => this.drawRings());
    plot.on("plotly_afterplot", () => this.drawRings());
    this.plot.addEventListener("mouseleave", () => this.hideTip());
  }

  // Client coordinates of a point, for the browser tests and the benchmark.
  pointPixel(id) {
    const i = this.index.get(id);
    if (i === undefined) return null;
    const full = this.plot._fullLayout;
    const rect = this.plot.getBoundingClientRect();
    const xa = full.xaxis;
    const ya = full.yaxis;
    return { x: rect.left + xa._offset + xa.l2p(this.points.x[i]), y: rect.top + ya._offset + ya.l2p(this.points.y[i]) };
  }

  tipText(i) {
    const meta = this.meta;
    if (!meta) return `<div class="dmv-tip-title">${escapeHTML(this.points.ids[i])}</div><div class="dmv-tip-muted">loading details…</div>`;
    const title = fieldValue(meta.title, i);
    const rows = [];
    for (const field of meta.fields || []) {
      const value = fieldValue(field, i);
      if (value === null || value === "") continue;
      rows.push(`<tr><th>${escapeHTML(field.name)}</th><td>${escapeHTML(value)}</td></tr>`);
    }
    for (const [name, value] of meta.common || []) rows.push(`<tr><th>${escapeHTML(name)}</th><td>${escapeHTML(value)}</td></tr>`);
    return `<div class="dmv-tip-title">${escapeHTML(title ?? this.points.ids[i])}</div><table>${rows.join("")}</table>`;
  }

  showTip(id, mouseEvent) {
    const i = this.index.get(id);
    if (i === undefined) return;
    const tip = this.tip;
    if (this.hoverId !== id) {
      this.hoverId = id;
      const img = tip.querySelector("img");
      img.classList.remove("dmv-missing");
      img.dataset.retries = "0";
      img.dataset.id = id;
      img.src = `${this.data.thumb_base}${thumbName(sampleOf(id))}${this.data.thumb_ext || ".webp"}`;
    }
    tip.querySelector(".dmv-tip-text").innerHTML = this.tipText(i);
    tip.hidden = false;
    tip.dataset.id = id;
    const wrapRect = this.wrap.getBoundingClientRect();
    let px;
    let py;
    if (mouseEvent && mouseEvent.clientX !== undefined) {
      px = mouseEvent.clientX - wrapRect.left;
      py = mouseEvent.clientY - wrapRect.top;
    } else {
      const p = this.pointPixel(id);
      px = p.x - wrapRect.left;
      py = p.y - wrapRect.top;
    }
    const w = tip.offsetWidth;
    const h = tip.offsetHeight;
    const room = this.plot.clientWidth;  // stay over the plot, off the legend
    let left = px + 16;
    if (left + w > room - 4) left = Math.max(4, px - w - 16);
    let top = py + 12;
    if (top + h > wrapRect.height - 4) top = Math.max(4, wrapRect.height - h - 4);
    tip.style.left = `${left}px`;
    tip.style.top = `${top}px`;
  }

  hideTip() {
    this.hoverId = null;
    this.tip.hidden = true;
    delete this.tip.dataset.id;
  }

  renderLegend() {
    const color = this.color;
    const legend = this.legend;
    const wasHidden = legend.hidden;
    if (!color || color.kind !== "category") {
      legend.hidden = true;
      legend.innerHTML = "";
      if (!wasHidden) this.resize();
      return;
    }
    legend.hidden = false;
    const order = legendOrder(color);
    const items = order.map((code) => {
      const off = this.hidden.has(code) ? " dmv-off" : "";
      return `<li class="dmv-legend-item${off}" data-code="${code}" title="click: hide or show · double-click: show only this">
        <span class="dmv-swatch" style="background:${color.colors[code]}"></span>
        <span class="dmv-legend-name">${escapeHTML(color.names[code])}</span>
        <span class="dmv-legend-count">${color.counts[code]}</span></li>`;
    });
    // after "only this" (or hiding some), one click brings every entry back
    const off = color.names.filter((_, code) => this.hidden.has(code)).length;
    const showAll = off ? `<button type="button" class="dmv-legend-all" title="show every entry again">show all (${off} hidden)</button>` : "";
    legend.innerHTML = `<div class="dmv-legend-head"><span class="dmv-legend-title">${escapeHTML(color.title)}</span>${showAll}</div><ul>${items.join("")}</ul>
      <div class="dmv-legend-hint">click: hide/show · double-click: only this</div>`;
    if (wasHidden) this.resize();
    const all = legend.querySelector(".dmv-legend-all");
    if (all) {
      all.onclick = () => {
        this.hidden.clear();
        this.render(window.Plotly);
        this.renderLegend();
      };
    }
    legend.querySelectorAll(".dmv-legend-item").forEach((item) => {
      const code = Number(item.dataset.code);
      item.onclick = () => {
        if (this.hidden.has(code)) this.hidden.delete(code);
        else this.hidden.add(code);
        this.render(window.Plotly);
        this.renderLegend();
      };
      item.ondblclick = () => {
        this.hidden = new Set(color.names.map((_, c) => c).filter((c) => c !== code));
        this.render(window.Plotly);
        this.renderLegend();
      };
    });
  }

  resize() {
    if (window.Plotly && this.plot._fullLayout) window.Plotly.Plots.resize(this.plot);
  }

  destroy() {
    if (window.Plotly) window.Plotly.purge(this.plot);
    this.unregister();
  }
}

// Small multiples: one panel per frame of an aligned layout (a denoising step, or a layer), every panel the
// same samples in the same order (points file: {ids, frames, x: [per frame], y: [per frame]}). The panels
// share their axes (same alignment, so one zoom for all). Hovering a point in any panel rings that sample in
// every panel and shows its preview, all in the browser; a click or a lasso/box in any panel goes back to
// Python as the map's trigger values, and the selection comes back ringed in every panel.
class MultiplesView extends MapView {
  register() {
    window.dmvMultiples = this; // handle for the browser tests
  }

  unregister() {
    if (window.dmvMultiples === this) window.dmvMultiples = undefined;
  }

  grid() {
    const n = this.points ? this.points.frames.length : 0;
    const cols = Math.max(1, Math.min(this.data.columns || 4, n));
    return { n, cols, rows: Math.max(1, Math.ceil(n / cols)) };
  }

  axes(p) {
    const full = this.plot._fullLayout;
    const k = p === 0 ? "" : String(p + 1);
    return full ? { xa: full[`xaxis${k}`], ya: full[`yaxis${k}`] } : {};
  }

  render(Plotly, force = false) {
    const data = this.data;
    const th = this.theme();
    const highlight = Array.isArray(data.highlight) && data.highlight.length > 0 ? data.highlight : null;
    const sig = [this.pointsUrl, data.color_url, [...this.hidden].sort().join(","), highlight ? highlight.join(",") : "",
      data.point_size, data.revision, data.columns, th.text, th.font, this.plot.clientWidth, data.height].join("|");
    if (!force && sig === this.figureSig) {
      this.drawRings();
      return;
    }
    this.figureSig = sig;
    const { traces, ids, panels } = this.figure(th, highlight);
    this.traceIds = ids;
    this.tracePanel = panels;
    this.wrap.dataset.panels = String(this.grid().n);
    this.wrap.dataset.highlighted = String(highlight ? ids[1].length : 0);
    Plotly.react(this.plot, traces, this.layout(th), this.config()).then(() => this.drawRings());
    if (!this.handlersAttached) this.attachHandlers();
  }

  figure(th, highlight) {
    const size = this.data.point_size || 3.5;
    const color = this.color;
    const colors = this.baseColors();
    const traces = [];
    const ids = [];
    const panels = [];
    const { n } = this.grid();
    for (let p = 0; p < n; p++) {
      const k = p === 0 ? "" : String(p + 1);
      const marker = { size, opacity: highlight ? 0.18 : 0.8, line: { width: 0 } };
      if (color && color.kind === "numeric") {
        Object.assign(marker, { color: color.values, colorscale: th.scale, cmin: color.min, cmax: color.max, showscale: p === 0,
          colorbar: { title: { text: color.title, font: { color: th.text } }, thickness: 10, len: 0.5, tickfont: { color: th.text }, outlinewidth: 0 } });
      } else {
        marker.color = colors || th.text;
      }
      traces.push({ type: "scattergl", mode: "markers", x: this.points.x[p], y: this.points.y[p], xaxis: `x${k}`, yaxis: `y${k}`,
        marker, hoverinfo: "none", name: `panel ${p}`, showlegend: false });
      ids.push(this.points.ids);
      panels.push(p);
      if (highlight) {  // the lasso/box selection (or another named set), at full colour over the dimmed rest
        const kept = highlight.filter((id) => this.index.has(id));
        const rows = kept.map((id) => this.index.get(id));
        const hlMarker = { size: size + 1, line: { width: 1, color: th.text } };
        if (color && color.kind === "numeric") Object.assign(hlMarker, { color: rows.map((i) => color.values[i]), colorscale: th.scale, cmin: color.min, cmax: color.max });
        else hlMarker.color = rows.map((i) => (colors ? colors[i] : th.text));
        traces.push({ type: "scattergl", mode: "markers", x: rows.map((i) => this.points.x[p][i]), y: rows.map((i) => this.points.y[p][i]),
          xaxis: `x${k}`, yaxis: `y${k}`, marker: hlMarker, hoverinfo: "none", name: `matches ${p}`, showlegend: false });
        ids.push(kept);
        panels.push(p);
      }
    }
    return { traces, ids, panels };
  }

  layout(th) {
    const { n, cols, rows } = this.grid();
    const height = this.data.height || 500;
    const width = Math.max(1, this.plot.clientWidth);
    const titlePx = 22;
    const gapX = 10 / width;
    const layout = super.layout(th);
    layout.margin = { l: 6, r: 34, t: titlePx + 4, b: 6 }; // right: room for the toolbar, off the last panel
    const inner = Math.max(1, height - layout.margin.t - layout.margin.b);
    const gapY = (titlePx + 8) / inner;
    const axis = { visible: false, showgrid: false, zeroline: false, automargin: false };
    layout.annotations = [];
    layout.shapes = [];
    const prefix = this.data.frame_prefix || "";
    for (let p = 0; p < n; p++) {
      const k = p === 0 ? "" : String(p + 1);
      const c = p % cols;
      const r = Math.floor(p / cols);
      const x0 = c / cols + (c > 0 ? gapX / 2 : 0);
      const x1 = (c + 1) / cols - (c < cols - 1 ? gapX / 2 : 0);
      const y1 = 1 - r / rows - (r > 0 ? gapY / 2 : 0);
      const y0 = 1 - (r + 1) / rows + (r < rows - 1 ? gapY / 2 : 0);
      // one alignment: every panel shows the same region, so zoom and pan in one move them all
      layout[`xaxis${k}`] = { ...axis, domain: [x0, x1], anchor: `y${k}`, ...(p ? { matches: "x" } : {}) };
      layout[`yaxis${k}`] = { ...axis, domain: [y0, y1], anchor: `x${k}`, ...(p ? { matches: "y" } : { scaleanchor: "x", scaleratio: 1 }) };
      layout.annotations.push({ xref: "paper", yref: "paper", x: (x0 + x1) / 2, y: y1, xanchor: "center", yanchor: "bottom", showarrow: false,
        text: escapeHTML(`${prefix}${this.points.frames[p]}`), font: { size: 13, color: th.text } });
      layout.shapes.push({ type: "rect", xref: "paper", yref: "paper", x0, x1, y0, y1, line: { width: 1, color: th.border }, layer: "below" });
    }
    return layout;
  }

  config() {
    const config = super.config();
    // the map's PNG export draws one plot; here plotly's own snapshot of the panels does
    config.modeBarButtonsToAdd = [];
    config.modeBarButtonsToRemove = config.modeBarButtonsToRemove.filter((b) => b !== "toImage");
    config.toImageButtonOptions = { filename: this.data.filename || "frames", scale: 2 };
    return config;
  }

  // Rings drawn over every panel: the selected sample (blue), its neighbours (red) and the hovered sample
  // (a dark ring), each at that panel's position of the sample. Cheap: a few SVG circles per panel, so a
  // hover redraws them without touching the WebGL points.
  drawRings() {
    const full = this.plot._fullLayout;
    if (!full || !this.points) return;
    const svg = this.fitRingLayer(0, 0, null, null);
    const r = (this.data.point_size || 3.5) / 2;
    const th = this.theme();
    const items = [];
    const counts = { selected: 0, hover: 0 };
    const { n } = this.grid();
    for (let p = 0; p < n; p++) {
      const { xa, ya } = this.axes(p);
      if (!xa || !ya || !xa.l2p) continue;
      const ring = (id, cls, radius, extra) => {
        const i = this.index.get(id);
        if (i === undefined) return false;
        const cx = xa._offset + xa.l2p(this.points.x[p][i]);
        const cy = ya._offset + ya.l2p(this.points.y[p][i]);
        // outside this panel (zoomed in): not drawn over a neighbouring panel
        if (cx < xa._offset || cx > xa._offset + xa._length || cy < ya._offset || cy > ya._offset + ya._length) return false;
        items.push(`<circle class="${cls}" data-id="${escapeHTML(id)}" data-panel="${p}" cx="${cx.toFixed(1)}" cy="${cy.toFixed(1)}" r="${radius}" ${extra}/>`);
        return true;
      };
      for (const id of this.data.knn || []) ring(id, "dmv-ring-knn", r + 4.5, `fill="none" stroke="${RED}" stroke-width="1.5"`);
      if (this.data.selected && ring(this.data.selected, "dmv-ring-selected", r + 3.5, `fill="${BLUE}" stroke="#ffffff" stroke-width="2"`)) counts.selected += 1;
      if (this.hoverId !== null) {
        const halo = `fill="none" stroke="${th.bg}" stroke-width="5"`;
        if (ring(this.hoverId, "dmv-ring-hover-halo", r + 6, halo)) {
          ring(this.hoverId, "dmv-ring-hover", r + 6, `fill="none" stroke="${th.text}" stroke-width="2.5"`);
          counts.hover += 1;
        }
      }
    }
    svg.querySelector("g").innerHTML = items.join("");
    this.wrap.dataset.hover = this.hoverId === null ? "" : this.hoverId;
    this.wrap.dataset.hoverPanels = String(counts.hover);
    this.wrap.dataset.selectedPanels = String(counts.selected);
  }

  pointPixel(id, panel = this.hoverPanel || 0) {
    const i = this.index.get(id);
    const { xa, ya } = this.axes(panel);
    if (i === undefined || !xa) return null;
    const rect = this.plot.getBoundingClientRect();
    return { x: rect.left + xa._offset + xa.l2p(this.points.x[panel][i]), y: rect.top + ya._offset + ya.l2p(this.points.y[panel][i]) };
  }

  tipText(i) {
    const html = super.tipText(i);
    const p = this.hoverPanel || 0;
    const row = `<tr><th>${escapeHTML(this.data.frame_title || "frame")}</th><td>${escapeHTML(this.points.frames[p])}</td></tr>`;
    return html.includes("<table>") ? html.replace("<table>", `<table>${row}`) : html;
  }

  showTip(id, mouseEvent, point) {
    if (point && this.tracePanel) this.hoverPanel = this.tracePanel[point.curveNumber] || 0;
    super.showTip(id, mouseEvent);
    this.drawRings();
    this.placeTip(id, mouseEvent);
  }

  // Beside the pointer where it hides the fewest of the hovered sample's rings: the card is wider than a
  // panel, and a card over the next panel would hide the very point the linked hover is there to show.
  placeTip(id, mouseEvent) {
    const tip = this.tip;
    const wrapRect = this.wrap.getBoundingClientRect();
    const plotRect = this.plot.getBoundingClientRect();
    let at = mouseEvent && mouseEvent.clientX !== undefined ? { x: mouseEvent.clientX, y: mouseEvent.clientY } : this.pointPixel(id);
    if (!at) return;
    at = { x: at.x - wrapRect.left, y: at.y - wrapRect.top };
    const w = tip.offsetWidth;
    const h = tip.offsetHeight;
    const dx = plotRect.left - wrapRect.left;
    const dy = plotRect.top - wrapRect.top;
    const rings = [...this.rings.querySelectorAll("circle.dmv-ring-hover")].map((c) => ({ x: dx + Number(c.getAttribute("cx")), y: dy + Number(c.getAttribute("cy")) }));
    const clampX = (v) => Math.min(Math.max(4, v), Math.max(4, this.plot.clientWidth - w - 4));
    const clampY = (v) => Math.min(Math.max(4, v), Math.max(4, wrapRect.height - h - 4));
    const candidates = [[at.x + 16, at.y + 12], [at.x - w - 16, at.y + 12], [at.x + 16, at.y - h - 12], [at.x - w - 16, at.y - h - 12],
      [at.x - w / 2, at.y + 18], [at.x - w / 2, at.y - h - 18]].map(([x, y]) => [clampX(x), clampY(y)]);
    let best = null;
    for (const [x, y] of candidates) {
      const hidden = rings.filter((r) => r.x > x - 10 && r.x < x + w + 10 && r.y > y - 10 && r.y < y + h + 10).length;
      if (best === null || hidden < best.hidden) best = { x, y, hidden };
    }
    tip.style.left = `${best.x}px`;
    tip.style.top = `${best.y}px`;
    tip.dataset.covers = String(best.hidden);
  }

  hideTip() {
    const had = this.hoverId !== null;
    super.hideTip();
    if (had) this.drawRings();
  }
}

function wireThumbRetries(root) {
  const img = root.querySelector(".dmv-tip img");
  if (!img || img.dataset.wired) return;
  img.dataset.wired = "1";
  // A thumbnail may still be being exported when it is first hovered: retry a few times, then say so.
  img.addEventListener("error", () => {
    const retries = Number(img.dataset.retries || "0");
    if (retries < 6) {
      img.dataset.retries = String(retries + 1);
      const src = img.src.split("?")[0];
      setTimeout(() => {
        if (img.dataset.id && img.src.split("?")[0] === src) img.src = `${src}?r=${retries + 1}`;
      }, 400);
    } else {
      img.classList.add("dmv-missing");
    }
  });
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  let view = INSTANCES.get(parentElement);
  if (!view) {
    view = data && data.kind === "multiples" ? new MultiplesView(parentElement) : new MapView(parentElement);
    INSTANCES.set(parentElement, view);
    wireThumbRetries(parentElement);
  }
  view.setTrigger = setTriggerValue;
  view.update(data || {});
  // Streamlit may call this cleanup while the element is only being re-rendered; tear down only once
  // the element has really left the page.
  return () => {
    setTimeout(() => {
      const host = parentElement.host || parentElement;
      if (!host.isConnected && INSTANCES.get(parentElement) === view) {
        view.destroy();
        INSTANCES.delete(parentElement);
      }
    }, 1000);
  };
}
