// The CRS timeline: draws the chart from the page's JSON block with plotly.js (served by
// the service), and fills the table of every value on demand. No inline script: the
// page's Content-Security-Policy allows scripts from the service only.
(function () {
  "use strict";
  var COLOURS = { 0: "#d9ead3", 1: "#ffe599", 2: "#f6b26b", 3: "#e06666", 4: "#8e3b8e", none: "#eeeeee" };
  var DOSE_SYMBOLS = {
    exposure: ["star", "Exposure"],
    tocilizumab: ["diamond", "Tocilizumab"],
    corticosteroid: ["square", "Corticosteroid"],
    antipyretic: ["circle", "Antipyretic"],
    other: ["triangle-up", "Other CRS therapy"],
    device: ["cross", "O2 device"]
  };
  // Plotly reads "YYYY-MM-DD HH:MM:SS" as wall-clock time; durations need the same
  // reading, so parse the text as if it were UTC (both ends alike).
  function ms(text) {
    var p = text.split(/[- :]/).map(Number);
    return Date.UTC(p[0], p[1] - 1, p[2], p[3], p[4], p[5] || 0);
  }
  // a sparse series is drawn with its points too (a single value makes no line)
  function mode(line) { return line.y.length <= 300 ? "lines+markers" : "lines"; }
  function bandColour(g) { return g === null ? COLOURS.none : COLOURS[g]; }

  function traces(d) {
    var out = [];
    // the grade band (top row): one horizontal bar per span, the grade written inside
    out.push({
      type: "bar", orientation: "h", name: "ASTCT grade", yaxis: "y5",
      y: d.grades.map(function () { return "Grade"; }),
      base: d.grades.map(function (g) { return g.start; }),
      x: d.grades.map(function (g) { return ms(g.end) - ms(g.start); }),
      text: d.grades.map(function (g) { return g.label; }),
      textposition: "inside", insidetextanchor: "middle", textangle: 0,
      textfont: { color: "#000", size: 13 },
      marker: {
        color: d.grades.map(function (g) { return bandColour(g.grade); }),
        line: { color: "#333", width: 1 },
        pattern: { shape: d.grades.map(function (g) { return g.possible !== null ? "/" : ""; }), fgcolor: "#333", size: 6 }
      },
      customdata: d.grades.map(function (g) { return [g.start, g.end]; }),
      hovertemplate: "%{text}<br>%{customdata[0]} – %{customdata[1]}<extra></extra>"
    });
    var t = d.lines.temperature;
    if (t) {
      out.push({ type: "scatter", mode: mode(t), name: "Temperature (°C)", x: t.x, y: t.y, yaxis: "y4",
        line: { color: "#b42318", width: 1.5 }, hovertemplate: "%{x}<br>%{y:.1f} °C<extra>Temperature</extra>" });
      var fx = [], fy = [];
      t.y.forEach(function (v, i) { if (v >= d.fever.value) { fx.push(t.x[i]); fy.push(v); } });
      out.push({ type: "scatter", mode: "markers", name: "Fever", x: fx, y: fy, yaxis: "y4",
        marker: { symbol: "triangle-up", size: 7, color: "#7a0f0f" }, hovertemplate: "%{x}<br>fever %{y:.1f} °C<extra></extra>" });
    }
    var s = d.lines.systolic_bp;
    if (s) {
      out.push({ type: "scatter", mode: mode(s), name: "Systolic BP (mmHg)", x: s.x, y: s.y, yaxis: "y3",
        line: { color: "#1f4e9c", width: 1.5 }, hovertemplate: "%{x}<br>SBP %{y:.0f} mmHg<extra></extra>" });
      var lx = [], ly = [];
      s.y.forEach(function (v, i) { if (v < d.systolic.value) { lx.push(s.x[i]); ly.push(v); } });
      out.push({ type: "scatter", mode: "markers", name: "Below the threshold", x: lx, y: ly, yaxis: "y3",
        marker: { symbol: "triangle-down", size: 7, color: "#0b2a5b" }, hovertemplate: "%{x}<br>SBP %{y:.0f} mmHg (below threshold)<extra></extra>" });
    }
    var m = d.lines.mean_arterial_pressure;
    if (m) {
      out.push({ type: "scatter", mode: mode(m), name: "MAP (mmHg)", x: m.x, y: m.y, yaxis: "y3",
        line: { color: "#5b7fbf", width: 1, dash: "dot" }, hovertemplate: "%{x}<br>MAP %{y:.0f} mmHg<extra></extra>" });
    }
    var o = d.lines.spo2;
    if (o) {
      out.push({ type: "scatter", mode: mode(o), name: "SpO2 (%)", x: o.x, y: o.y, yaxis: "y2",
        line: { color: "#186a3b", width: 1.5 }, hovertemplate: "%{x}<br>SpO2 %{y:.0f} %<extra></extra>" });
    }
    var f = d.lines.oxygen_flow;
    if (f) {
      out.push({ type: "scatter", mode: mode(f), name: "O2 flow (L/min)", x: f.x, y: f.y, yaxis: "y6",
        line: { color: "#6c3483", width: 1.5, shape: "hv", dash: "dash" }, hovertemplate: "%{x}<br>O2 %{y} L/min<extra></extra>" });
    }
    // vasopressors: bars over the time they ran, one row per drug
    if (d.pressors.length) {
      out.push({
        type: "bar", orientation: "h", name: "Vasopressors", yaxis: "y",
        y: d.pressors.map(function (p) { return p.label; }),
        base: d.pressors.map(function (p) { return p.start; }),
        x: d.pressors.map(function (p) { return Math.max(ms(p.end) - ms(p.start), 60000); }),
        text: d.pressors.map(function (p) { return p.label + (p.running ? " (running)" : ""); }),
        textposition: "inside", insidetextanchor: "start", textfont: { color: "#fff" },
        marker: { color: "#7b241c", line: { color: "#000", width: 1 } },
        customdata: d.pressors.map(function (p) { return [p.start, p.running ? "running" : p.end]; }),
        hovertemplate: "%{y}<br>%{customdata[0]} – %{customdata[1]}<extra>vasopressor</extra>"
      });
    }
    var markers = d.doses.concat(d.devices);
    Object.keys(DOSE_SYMBOLS).forEach(function (kind) {
      var these = markers.filter(function (x) { return x.kind === kind; });
      if (!these.length) { return; }
      out.push({
        type: "scatter", mode: "markers", name: DOSE_SYMBOLS[kind][1], yaxis: "y",
        x: these.map(function (x) { return x.x; }),
        y: these.map(function () { return DOSE_SYMBOLS[kind][1]; }),
        text: these.map(function (x) { return x.label; }),
        marker: { symbol: DOSE_SYMBOLS[kind][0], size: 13, color: "#222", line: { color: "#fff", width: 1 } },
        hovertemplate: "%{x}<br>%{text}<extra>" + DOSE_SYMBOLS[kind][1] + "</extra>"
      });
    });
    return out;
  }

  function layout(d) {
    var shapes = [], notes = [];
    function vline(x, label, dash) {
      shapes.push({ type: "line", xref: "x", yref: "paper", x0: x, x1: x, y0: 0, y1: 1, line: { color: "#333", width: 1.5, dash: dash } });
      notes.push({ x: x, xref: "x", y: 1.0, yref: "paper", yanchor: "bottom", text: label, showarrow: false, font: { size: 12 } });
    }
    function hline(axis, value, label) {
      shapes.push({ type: "line", xref: "paper", yref: axis, x0: 0, x1: 1, y0: value, y1: value, line: { color: "#333", width: 1.5, dash: "dash" } });
      notes.push({ xref: "paper", x: 1, xanchor: "right", yref: axis, y: value, yanchor: "bottom", text: label, showarrow: false, font: { size: 12 }, bgcolor: "rgba(255,255,255,.75)" });
    }
    vline(d.exposureAt, "exposure", "solid");
    if (d.windowEndsShown) { vline(d.windowEnds, "risk window ends", "dashdot"); }
    vline(d.evaluatedAt, "evaluated", "dot");
    hline("y4", d.fever.value, d.fever.label);
    hline("y3", d.systolic.value, d.systolic.label);
    if (d.meanArterial) { hline("y3", d.meanArterial.value, d.meanArterial.label); }
    var axis = { showline: true, linecolor: "#333", mirror: true, ticks: "outside", gridcolor: "#e5e5e5", zeroline: false };
    function y(domain, title, extra) { return Object.assign({ domain: domain, title: { text: title, font: { size: 13 } } }, axis, extra || {}); }
    return {
      height: 780, margin: { l: 150, r: 70, t: 30, b: 60 }, showlegend: false, hovermode: "closest",
      font: { family: "system-ui, 'DejaVu Sans', sans-serif", size: 13, color: "#1b1b1b" },
      bargap: 0.25, barmode: "overlay",
      xaxis: Object.assign({ type: "date", range: [d.start, d.end], title: { text: "Time (" + d.zone + ", " + d.offsets + ")" } }, axis),
      yaxis: y([0, 0.17], "", { type: "category", automargin: true, showgrid: false }),
      yaxis2: y([0.21, 0.39], "SpO2 (%)", { rangemode: "normal" }),
      yaxis6: Object.assign({ overlaying: "y2", side: "right", title: { text: "O2 L/min" }, rangemode: "tozero", showgrid: false }, { ticks: "outside" }),
      yaxis3: y([0.43, 0.64], "Systolic BP (mmHg)"),
      yaxis4: y([0.68, 0.88], "Temperature (°C)"),
      yaxis5: y([0.92, 1], "", { type: "category", showgrid: false, fixedrange: true }),
      shapes: shapes, annotations: notes
    };
  }

  function valuesTable(d) {
    var names = Object.keys(d.lines);
    var rows = new Map();
    names.forEach(function (name, col) {
      var line = d.lines[name];
      line.x.forEach(function (x, i) {
        if (!rows.has(x)) { rows.set(x, new Array(names.length).fill("")); }
        rows.get(x)[col] = String(line.y[i]);
      });
    });
    var table = document.createElement("table");
    table.className = "data";
    var cap = table.createCaption();
    cap.textContent = "Measured values (" + d.zone + ", " + d.offsets + ")";
    var head = table.createTHead().insertRow();
    ["Time"].concat(names.map(function (n) { return d.lines[n].label + " (" + d.lines[n].unit + ")"; })).forEach(function (h) {
      var th = document.createElement("th"); th.scope = "col"; th.textContent = h; head.appendChild(th);
    });
    var body = table.createTBody();
    Array.from(rows.keys()).sort().forEach(function (x) {
      var tr = body.insertRow();
      var th = document.createElement("th"); th.scope = "row"; th.textContent = x; tr.appendChild(th);
      rows.get(x).forEach(function (v) { tr.insertCell().textContent = v; });
    });
    return table;
  }

  function start() {
    var d = JSON.parse(document.getElementById("timeline-data").textContent);
    var status = document.getElementById("chart-status");
    var chart = document.getElementById("chart");
    var begun = performance.now();
    window.Plotly.newPlot(chart, traces(d), layout(d), { displayModeBar: false, responsive: true }).then(function () {
      var now = performance.now();
      var points = Object.keys(d.lines).reduce(function (n, k) { return n + d.lines[k].y.length; }, 0);
      chart.dataset.drawMs = (now - begun).toFixed(1);
      chart.dataset.readyMs = now.toFixed(1); // since the navigation started: served + drawn
      chart.dataset.points = String(points);
      status.textContent = "Chart drawn: " + points + " values.";
      document.body.classList.add("drawn");
    });
    var details = document.getElementById("values");
    details.addEventListener("toggle", function () {
      var holder = document.getElementById("values-table");
      if (details.open && !holder.firstChild) { holder.appendChild(valuesTable(d)); }
    });
    window.addEventListener("beforeprint", function () { window.Plotly.Plots.resize(chart); });
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
}());
