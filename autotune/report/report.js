"use strict";
// Small, dependency-free behaviour: hover tooltips, copy button, sortable tables.
// Every string reaches the page through textContent, never as markup.
(function () {
  var data = {};
  try {
    data = JSON.parse(document.getElementById("report-data").textContent || "{}");
  } catch (err) {
    data = {};
  }
  window.autotuneReport = data;

  // Tooltips: the SVG <title> is the source of truth (it also works without JS); move it into a
  // data field on first hover so the browser's own slower tooltip does not show twice.
  var tip = document.getElementById("tip");
  function tipText(el) {
    if (el.__tip === undefined) {
      var t = null;
      for (var i = 0; i < el.childNodes.length; i++) {
        if (el.childNodes[i].nodeName.toLowerCase() === "title") { t = el.childNodes[i]; break; }
      }
      el.__tip = t ? t.textContent : "";
      if (t) { el.removeChild(t); }
    }
    return el.__tip;
  }
  function place(ev) {
    var x = ev.clientX + 14, y = ev.clientY + 14;
    var w = tip.offsetWidth, h = tip.offsetHeight;
    if (x + w > window.innerWidth - 4) { x = Math.max(4, ev.clientX - w - 14); }
    if (y + h > window.innerHeight - 4) { y = Math.max(4, ev.clientY - h - 14); }
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
  document.addEventListener("mouseover", function (ev) {
    var el = ev.target && ev.target.closest ? ev.target.closest(".hov") : null;
    if (!el) { tip.hidden = true; return; }
    var text = tipText(el);
    if (!text) { tip.hidden = true; return; }
    tip.textContent = text;
    tip.hidden = false;
    place(ev);
  });
  document.addEventListener("mousemove", function (ev) {
    if (!tip.hidden) { place(ev); }
  });
  document.addEventListener("mouseout", function (ev) {
    if (!ev.relatedTarget || !ev.relatedTarget.closest || !ev.relatedTarget.closest(".hov")) {
      tip.hidden = true;
    }
  });

  // Copy button: the clipboard API may be unavailable on file:// pages; fall back to a selection.
  function fallbackCopy(text) {
    var ta = document.createElement("textarea");
    ta.value = text;
    ta.setAttribute("readonly", "");
    ta.style.position = "fixed";
    ta.style.left = "-9999px";
    document.body.appendChild(ta);
    ta.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (err) { ok = false; }
    document.body.removeChild(ta);
    return ok;
  }
  function flash(btn, text) {
    var old = btn.getAttribute("data-label") || btn.textContent;
    btn.setAttribute("data-label", old);
    btn.textContent = text;
    setTimeout(function () { btn.textContent = old; }, 1500);
  }
  Array.prototype.forEach.call(document.querySelectorAll("button[data-copy]"), function (btn) {
    btn.addEventListener("click", function () {
      var src = document.getElementById(btn.getAttribute("data-copy"));
      var text = src ? src.textContent : "";
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(
          function () { flash(btn, "Copied"); },
          function () { flash(btn, fallbackCopy(text) ? "Copied" : "Select and copy"); }
        );
      } else {
        flash(btn, fallbackCopy(text) ? "Copied" : "Select and copy");
      }
    });
  });

  // Sortable tables: click a header; numbers sort numerically (data-v holds the raw value).
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var heads = table.querySelectorAll("th");
    Array.prototype.forEach.call(heads, function (th, col) {
      th.classList.add("sortable");
      th.addEventListener("click", function () {
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var dir = th.getAttribute("data-dir") === "asc" ? -1 : 1;
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("data-dir"); });
        th.setAttribute("data-dir", dir === 1 ? "asc" : "desc");
        function key(row) {
          var cell = row.cells[col];
          var v = cell ? cell.getAttribute("data-v") : null;
          if (v !== null && v !== "" && !isNaN(Number(v))) { return Number(v); }
          return cell ? cell.textContent : "";
        }
        rows.sort(function (a, b) {
          var x = key(a), y = key(b);
          if (typeof x === "number" && typeof y === "number") { return (x - y) * dir; }
          return String(x).localeCompare(String(y)) * dir;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
}());
