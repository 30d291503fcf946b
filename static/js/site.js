/* Shows every <time datetime data-fmt="time|date|datetime"> in the reader's own time zone. */
(function () {
  "use strict";
  var formats = {
    time: { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" },
    date: { year: "numeric", month: "short", day: "numeric" },
    short: { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23" },
    datetime: { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23" },
  };
  function localize(root) {
    (root || document).querySelectorAll("time[datetime][data-fmt]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      var fmt = formats[el.dataset.fmt];
      if (isNaN(when.getTime()) || !fmt) return;
      if (!el.title) el.title = when.toString();
      el.textContent = when.toLocaleString(undefined, fmt);
    });
  }
  window.MoltStreet = window.MoltStreet || {};
  window.MoltStreet.localizeTimes = localize;
  window.MoltStreet.timeFormats = formats;
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", function () { localize(); });
  else localize();
})();
