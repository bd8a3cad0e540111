// Tally's tracker. A site adds one tag:
//   <script defer src="https://<tally-host>/tally.js"></script>
// Each page view, and each single-page-app navigation (history.pushState, the back and
// forward buttons), is sent once as {url, referrer, width} in a text/plain beacon: a "simple"
// cross-origin request, so no CORS preflight. The window's width says phone, tablet,
// laptop or desktop. No cookie, nothing stored in the browser.
// Pages opened from file: or on localhost send nothing unless the tag has
// data-allow-local; browsers driven by automation (navigator.webdriver) send nothing.
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || navigator.webdriver) return;
  var local = location.protocol === "file:" ||
    /^(localhost|127(\.\d+){3}|\[::1\])$|\.localhost$/.test(location.hostname);
  if (local && !script.hasAttribute("data-allow-local")) return;
  var endpoint = new URL("/api/collect", script.src).href;
  var sent = null;

  function send(referrer) {
    if (location.href === sent) return; // the same address again is not a new view
    sent = location.href;
    var body = JSON.stringify({ url: sent, referrer: referrer || null, width: innerWidth });
    if (navigator.sendBeacon && navigator.sendBeacon(endpoint, body)) return;
    fetch(endpoint, { method: "POST", body: body, keepalive: true, mode: "no-cors" })
      .catch(function () {});
  }

  var pushState = history.pushState;
  history.pushState = function () {
    var from = location.href;
    var result = pushState.apply(this, arguments);
    send(from);
    return result;
  };
  addEventListener("popstate", function () { send(sent); });
  send(document.referrer);
})();
