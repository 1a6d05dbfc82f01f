"""The fixed parts of the HTML report: its style sheet and its script, inlined into every page (no network).

The script sorts a table when one clicks a column header (numbers as numbers, ``n/a`` last; a second click reverses)
and steps through a case's slices with its slider, swapping the frame's ``data:`` URI. When it has set everything up
it marks the page ``<body data-ready="1">``, which a test waits for.
"""

from __future__ import annotations

__all__ = ["SCRIPT", "STYLE"]

STYLE = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px; color: #1d1d1f;
       background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.note { color: #555; margin: 2px 0; }
table { border-collapse: collapse; margin: 6px 0 4px; }
.scroll { overflow-x: auto; }  /* a table of many classes scrolls instead of leaving the page */
th, td { padding: 3px 9px; border-bottom: 1px solid #e4e4e4; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f4f4f6; position: sticky; top: 0; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[data-order="ascending"]::after { content: " \\25B2"; font-size: 10px; }
table.sortable th[data-order="descending"]::after { content: " \\25BC"; font-size: 10px; }
tr.total td { font-weight: 600; border-top: 2px solid #bbb; }
td.na { color: #999; }
figure { margin: 8px 0; display: inline-block; vertical-align: top; }
figcaption { color: #555; font-size: 12px; }
img.pixels { image-rendering: pixelated; }
.legend span { display: inline-block; margin: 0 12px 4px 0; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -1px;
            border: 1px solid #0003; }
.case { border: 1px solid #e4e4e4; border-radius: 6px; padding: 8px 12px; margin: 10px 0; }
.case .panels { display: flex; gap: 18px; flex-wrap: wrap; }
.columns { color: #555; font-size: 12px; }
.slider { margin-top: 8px; }
.slider input { width: 320px; vertical-align: middle; }
.slider output { font-variant-numeric: tabular-nums; margin-left: 8px; }
"""

SCRIPT = """
(function () {
  "use strict";
  function cellValue(row, index) {
    var cell = row.cells[index];
    var raw = cell.getAttribute("data-value");
    if (raw === null) { raw = cell.textContent; }
    var number = parseFloat(raw);
    return isNaN(number) ? { text: raw.trim().toLowerCase(), number: null } : { text: raw, number: number };
  }
  function compare(a, b) {
    if (a.number !== null && b.number !== null) { return a.number - b.number; }
    if (a.number !== null) { return -1; }
    if (b.number !== null) { return 1; }
    return a.text < b.text ? -1 : a.text > b.text ? 1 : 0;
  }
  function sortTable(table, index) {
    var header = table.tHead.rows[0].cells[index];
    var descending = header.getAttribute("data-order") === "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) { cell.removeAttribute("data-order"); });
    header.setAttribute("data-order", descending ? "descending" : "ascending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (x, y) {
      var a = cellValue(x, index), b = cellValue(y, index);
      var missingA = a.number === null && a.text === "n/a", missingB = b.number === null && b.text === "n/a";
      if (missingA !== missingB) { return missingA ? 1 : -1; }
      var order = compare(a, b);
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  function setUpTables() {
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell, index) {
        cell.addEventListener("click", function () { sortTable(table, index); });
      });
    });
  }
  function setUpSliders() {
    Array.prototype.forEach.call(document.querySelectorAll(".slider"), function (box) {
      var frames = JSON.parse(box.querySelector("script[type='application/json']").textContent);
      var input = box.querySelector("input"), picture = box.querySelector("img"), label = box.querySelector("output");
      function show() {
        var frame = frames[parseInt(input.value, 10)];
        picture.src = frame.src;
        var position = parseInt(input.value, 10) + 1;
        label.textContent = "slice " + frame.slice + " (" + position + " of " + frames.length + ")";
        box.setAttribute("data-slice", String(frame.slice));
      }
      input.addEventListener("input", show);
      show();
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    setUpTables();
    setUpSliders();
    document.body.setAttribute("data-ready", "1");
  });
})();
"""
