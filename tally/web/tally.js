// Tally's tracker (README, "Collect from your website"): <script defer src="https://<tally>/tally.js">.
// Sends each view (a prerendered page once shown, one restored from the back-forward cache again)
// and single-page-app navigation to a new path as {url, referrer, width}, a text/plain beacon
// (no CORS preflight), and custom events: tally.track(name, props), clicks on [data-tally-event]
// (props from data-tally-prop-* attributes), outbound links with data-track-outbound on the tag.
// No cookie, nothing stored. Silent on file: and localhost (unless data-allow-local) and under
// automation (navigator.webdriver). Calls made before it ran wait in window.tally.q.
(function () {
  var old = window.tally || {};
  if (old.on) return; // the tag twice on a page (a theme's and a tag manager's): one counts
  var queued = old.q || [];
  window.tally = { track: function () {}, on: 1 }; // a page may call it whether or not we send
  var script = document.currentScript;
  // Without sendBeacon (Firefox's beacon.enabled turned off) nothing is sent.
  if (!script || navigator.webdriver || !navigator.sendBeacon) return;
  if ((location.protocol == "file:" || /^(localhost|127(\.\d+){3}|\[::1\])$|\.localhost$/.test(location.hostname)) &&
    !script.hasAttribute("data-allow-local")) return;
  var endpoint = new URL("/api/collect", script.src);
  var sent; // the last view's page (its URL without query or fragment)
  // A prerendered page (speculation rules, or the address bar's guess) runs before it is shown,
  // and may never be: its view counts once it is, and what it tracks till then waits here
  // (tally.track, and the calls queued before this script ran), to be sent after the view.
  var waiting = [];

  function post(fields) {
    document.prerendering ? waiting.push(fields) : navigator.sendBeacon(endpoint, JSON.stringify(fields));
  }

  function send(referrer) { // the page's own referrer unless it is a single-page app's navigation
    // A view is a new path, which is what Tally keeps of the URL: the same path with another
    // query (a search box's ?q=a, ?q=ab) or fragment (an in-page anchor, whose clicks and Back
    // fire popstate too) is not one. Nor with new utm_* parameters, as with Plausible: a
    // campaign's visitor arrives by loading a page, which counted with its source, and an app
    // that rewrites or drops them would count the page twice. A new path counts with its query.
    // Nothing while prerendering: the page as shown counts (a router's pushState then is none).
    var url = location.href.split("#")[0];
    if (document.prerendering || url.split("?")[0] == sent) return;
    sent = url.split("?")[0];
    post({ url: url, referrer: referrer || document.referrer, width: innerWidth });
  }

  function track(name, props) {
    // tally.track() or tally.track({...}) would count "undefined" or "[object Object]".
    if (typeof name !== "string" || !name) return console.warn("tally.track: no name");
    // Without the fragment, as a view: never a page here, and it may hold what a site passes its
    // own script (an OAuth token after #access_token=), which stays in the browser.
    post({ url: location.href.split("#")[0], event: name, props: props });
  }

  function clicked(click) {
    // A click with the main button, or a middle one (auxclick, which opens a link in a new
    // tab); Safari before 18.2 sent a middle click as click too: not counted twice.
    if (click.button != (click.type == "auxclick")) return;
    var target = click.target.closest ? click.target : click.target.parentElement; // a text node
    // A middle click counts where it opens something: on a link (or inside one).
    var link = target && target.closest("a[href]");
    var tagged = (link || !click.button) && target && target.closest("[data-tally-event]");
    if (tagged) {
      var props = {};
      for (var i = 0, attribute; (attribute = tagged.attributes[i++]); ) {
        if (!attribute.name.indexOf("data-tally-prop-")) props[attribute.name.slice(16)] = attribute.value;
      }
      track(tagged.getAttribute("data-tally-event"), props);
    }
    if (link && script.hasAttribute("data-track-outbound") && /^https?:$/.test(link.protocol) &&
        link.host != location.host) {
      track("Outbound Link", { url: link.host });
    }
  }
  addEventListener("click", clicked, true);
  addEventListener("auxclick", clicked, true); // a middle click fires no click event

  var pushState = history.pushState;
  history.pushState = function () {
    var result = pushState.apply(this, arguments);
    send(sent); // the referrer: the page of the last view (an own page: only its domain is kept)
    return result;
  };
  addEventListener("popstate", function () { send(sent); });
  // A page restored from the back-forward cache runs no script again: a view all the same, as
  // one that Back loads again is.
  addEventListener("pageshow", function (show) { if (show.persisted) sent = 0, send(); });
  document.addEventListener("prerenderingchange", function () { // shown: its view, then its events
    send();
    waiting.forEach(post);
  });
  send();
  window.tally.track = track;
  queued.forEach(function (call) { track.apply(null, call); });
})();
