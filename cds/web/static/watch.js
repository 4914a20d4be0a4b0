// The watch list: rows drawn from the page's JSON block, then refreshed from
// /crs/watch.json without reloading the page. Arrow keys move between the rows' links.
(function () {
  "use strict";
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function gradeChip(g, possible) {
    var chip = el("span", "grade-chip g" + g + (possible !== null ? " possible" : ""), "G" + g);
    chip.title = "ASTCT grade " + g;
    return chip;
  }
  function reading(td, r, none) {
    if (!r) { td.textContent = none; return; }
    td.appendChild(el("span", "", r.text));
    td.appendChild(el("small", "", r.local + " · " + r.ago));
  }
  function mini(p, now) {
    var box = el("div", "mini");
    var from = Date.parse(p.exposureAt), to = Date.parse(now), span = Math.max(to - from, 1);
    var words = [];
    p.history.forEach(function (h, i) {
      var start = Math.max(Date.parse(h.at), from);
      var end = i + 1 < p.history.length ? Date.parse(p.history[i + 1].at) : to;
      var seg = el("span", "g" + h.grade + (h.possible !== null ? " possible" : ""), "G" + h.grade);
      var left = (start - from) / span * 100;
      // an evaluation is a moment: at least wide enough for its label, kept inside
      if (left > 85) { seg.style.right = (100 - Math.min(left + (end - start) / span * 100, 100)).toFixed(2) + "%"; } else { seg.style.left = left.toFixed(2) + "%"; }
      seg.style.width = (Math.max(end - start, 0) / span * 100).toFixed(2) + "%";
      box.appendChild(seg);
      words.push("grade " + h.grade + (h.possible !== null ? " (possible " + h.possible + ")" : "") + " from " + h.at.slice(0, 16).replace("T", " "));
    });
    box.setAttribute("role", "img");
    box.setAttribute("aria-label", "Grade since exposure: " + (words.length ? words.join("; ") : "no evaluation"));
    return box;
  }
  function row(p, now) {
    var tr = el("tr");
    tr.dataset.patient = p.patient;
    var g = tr.insertCell();
    g.appendChild(gradeChip(p.grade, p.possibleGrade));
    if (p.possibleGrade !== null) { g.appendChild(el("small", "", "possible G" + p.possibleGrade)); }
    var who = tr.insertCell();
    if (p.timeline) {
      var a = el("a", "row-link", p.patient.slice(0, 8));
      a.href = p.timeline;
      a.setAttribute("aria-label", "Timeline of patient " + p.patient.slice(0, 8) + ", grade " + p.grade + ", " + p.product + " day " + p.day);
      who.appendChild(a);
    } else {
      who.textContent = p.patient.slice(0, 8);
    }
    who.appendChild(el("small", "", "as of " + p.evaluatedLocal));
    var product = tr.insertCell();
    product.appendChild(el("span", "", p.product));
    product.appendChild(el("small", "", "day " + p.day));
    tr.insertCell().appendChild(gradeChip(p.maxGrade, null));
    reading(tr.insertCell(), p.lastTemperature, "none charted");
    reading(tr.insertCell(), p.lastSystolic, "none charted");
    reading(tr.insertCell(), p.lastOxygen, "none charted");
    var gap = tr.insertCell();
    if (p.dataGap) { gap.appendChild(el("span", "gap", "data gap")); } else { gap.textContent = "current"; }
    tr.insertCell().textContent = p.lastNotifiedAt ? p.lastNotifiedAt.slice(0, 16).replace("T", " ") : "—";
    tr.insertCell().appendChild(mini(p, now));
    return tr;
  }
  function render(data) {
    var body = document.getElementById("watch-rows");
    var focused = document.activeElement && document.activeElement.classList.contains("row-link")
      ? document.activeElement.getAttribute("href") : null;
    var rows = document.createDocumentFragment();
    data.patients.forEach(function (p) { rows.appendChild(row(p, data.generatedAt)); });
    body.replaceChildren(rows);
    document.getElementById("watch-caption").textContent = data.patients.length + " patients in a risk window";
    document.getElementById("refreshed").textContent = "Updated " + data.generatedLocal + "; refreshes every " + data.refreshSeconds + " s.";
    if (focused) {
      var again = body.querySelector('a[href="' + focused + '"]');
      if (again) { again.focus(); }
    }
    document.body.dataset.rows = String(data.patients.length);
    document.body.classList.add("drawn");
  }
  function refresh() {
    fetch("/crs/watch.json", { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (r.status === 401) { throw new Error("signed out"); }
        return r.json();
      })
      .then(render)
      .catch(function (e) { document.getElementById("refreshed").textContent = "Not refreshed: " + e.message + "."; });
  }
  function keys(event) {
    if (event.key !== "ArrowDown" && event.key !== "ArrowUp") { return; }
    var links = Array.from(document.querySelectorAll("#watch-rows a.row-link"));
    var i = links.indexOf(document.activeElement);
    if (i < 0) { return; }
    var next = links[event.key === "ArrowDown" ? Math.min(i + 1, links.length - 1) : Math.max(i - 1, 0)];
    next.focus();
    event.preventDefault();
  }
  function start() {
    var data = JSON.parse(document.getElementById("watch-data").textContent);
    var begun = performance.now();
    render(data);
    document.body.dataset.renderMs = (performance.now() - begun).toFixed(1);
    document.body.dataset.readyMs = performance.now().toFixed(1);
    document.getElementById("watch-rows").addEventListener("keydown", keys);
    window.setInterval(refresh, data.refreshSeconds * 1000);
    window.crsRefresh = refresh; // for the tests: refresh now
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
}());
