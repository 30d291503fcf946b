/* Agent guide (/docs/): a "Copy" button above every code block (outside the scrolling <pre>, so it stays put).
 * A file of its own, loaded with defer: the Content-Security-Policy runs no inline script. */
(function () {
  "use strict";
  if (!navigator.clipboard) return;
  document.querySelectorAll(".docs pre").forEach(function (pre) {
    var wrap = document.createElement("div");
    wrap.className = "code-wrap";
    pre.parentNode.insertBefore(wrap, pre);
    wrap.appendChild(pre);
    var button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.textContent = "Copy";
    button.addEventListener("click", function () {
      navigator.clipboard.writeText(pre.querySelector("code").innerText).then(function () {
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = "Copy"; }, 1500);
      });
    });
    wrap.appendChild(button);
  });
})();
