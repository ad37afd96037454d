// Progressive enhancement only: every page works without this file.
"use strict";
(function () {
  // Times: the viewer's own time zone; the UTC value stays in the title (hover).
  function localTimes(root) {
    var fmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (!isNaN(d)) { el.textContent = fmt.format(d); }
    });
  }
  // Copy buttons beside read-only fields.
  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest("[data-copy]");
    if (btn) {
      var field = document.getElementById(btn.getAttribute("data-copy"));
      field.select();
      (navigator.clipboard ? navigator.clipboard.writeText(field.value) : Promise.reject())
        .catch(function () { document.execCommand("copy"); })
        .finally(function () { btn.textContent = "Copied"; });
    }
    var back = ev.target.closest("[data-back]");
    if (back && history.length > 1) { ev.preventDefault(); history.back(); }
  });
  document.addEventListener("change", function (ev) {
    if (ev.target.matches("[data-autosubmit]")) { ev.target.form.submit(); }
  });
  // A fragment that refreshes itself: the first page of incidents, a job's progress.
  function poll(el, url, every, stopWhen) {
    var timer = setInterval(function () {
      fetch(url, { headers: { "Accept": "text/html" }, credentials: "same-origin", redirect: "manual" })
        .then(function (r) { if (r.ok) { return r.text(); } throw new Error(r.status); })
        .then(function (html) {
          var before = el.querySelectorAll("tr[data-id]").length;
          var tmpl = document.createElement("template");
          tmpl.innerHTML = html;
          if (el.tagName === "TBODY") {
            el.replaceChildren.apply(el, Array.prototype.slice.call(tmpl.content.childNodes));
          } else {
            el.replaceChildren(tmpl.content);
          }
          localTimes(el);
          var after = el.querySelectorAll("tr[data-id]").length;
          var status = document.getElementById("live-status");
          if (status && after > before) { status.textContent = (after - before) + " new incident(s)"; }
          if (stopWhen && stopWhen(el)) { clearInterval(timer); }
        })
        .catch(function () { /* the next tick tries again */ });
    }, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    var rows = document.querySelector("[data-live]");
    if (rows) { poll(rows, rows.getAttribute("data-live"), parseInt(rows.getAttribute("data-interval"), 10) || 5000); }
    var job = document.querySelector("[data-job]");
    if (job && !job.querySelector("[data-done]")) {
      poll(job, job.getAttribute("data-job"), 1000, function (el) { return !!el.querySelector("[data-done]"); });
    }
    var summary = document.querySelector(".error-summary");
    if (summary) { summary.focus(); }
  });
})();
