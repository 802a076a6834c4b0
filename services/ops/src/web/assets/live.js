// Live updates of the PRX CI dashboard (vendored, no build step): the page's `[data-live]`
// region names the topics it shows (`data-topics`); when the server's Server-Sent Events
// (`/events`) report a change to one of them, the region is fetched again and swapped in.
// Elements marked `data-keep` (with an id) survive a swap when the fresh page has the same one
// with the same `data-keep` value: a streaming log keeps its text, its connection and its place.
// After a swap, `prx:live-updated` is dispatched on the document.
// Without JavaScript the pages still work: they just do not update by themselves.
(function () {
  "use strict";
  var region = document.querySelector("[data-live]");
  if (!region || !window.EventSource || !window.fetch) {
    return;
  }
  var topics = (region.getAttribute("data-topics") || "").split(" ");
  var busy = false;
  var again = false;

  function swap(fresh) {
    var scrolls = [];
    var kept = fresh.querySelectorAll("[data-keep][id]");
    for (var i = 0; i < kept.length; i++) {
      var old = document.getElementById(kept[i].id);
      if (old && region.contains(old) && old.getAttribute("data-keep") === kept[i].getAttribute("data-keep")) {
        var pres = old.querySelectorAll("pre");
        for (var j = 0; j < pres.length; j++) {
          scrolls.push([pres[j], pres[j].scrollTop]);
        }
        kept[i].parentNode.replaceChild(document.adoptNode(old), kept[i]);
      }
    }
    var nodes = [];
    while (fresh.firstChild) {
      nodes.push(document.adoptNode(fresh.firstChild));
    }
    region.replaceChildren.apply(region, nodes);
    for (var k = 0; k < scrolls.length; k++) {
      scrolls[k][0].scrollTop = scrolls[k][1];
    }
  }

  // Someone typing in a form of the region (a filter) is not interrupted: the refresh waits
  // until the field loses focus. Fields of kept elements (the log's "follow") survive a swap.
  function editing() {
    var active = document.activeElement;
    return active && region.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName) &&
      !active.closest("[data-keep]");
  }

  function refresh() {
    if (editing()) {
      document.activeElement.addEventListener("blur", refresh, { once: true });
      return;
    }
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Prx-Live": "1" } })
      .then(function (response) {
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html === null) {
          return;
        }
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector("[data-live]");
        if (fresh) {
          swap(fresh);
          region.setAttribute("data-updated", String(Date.now()));
          document.dispatchEvent(new Event("prx:live-updated"));
        }
      })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) {
          again = false;
          refresh();
        }
      });
  }

  var events = new EventSource("/events");
  events.addEventListener("change", function (event) {
    var changed = String(event.data).split(" ");
    for (var i = 0; i < changed.length; i++) {
      if (changed[i] === "*" || topics.indexOf(changed[i]) >= 0) {
        refresh();
        return;
      }
    }
  });
  document.body.setAttribute("data-live-connected", "true");
})();
