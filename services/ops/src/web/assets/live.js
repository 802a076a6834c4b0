// Live updates of the PRX CI dashboard (vendored, no build step): the page's `[data-live]`
// region names the topics it shows (`data-topics`); when the server's Server-Sent Events
// (`/events`) report a change to one of them, the region is fetched again and swapped in.
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

  // Someone typing in a form of the region (a filter) is not interrupted: the refresh waits
  // until the field loses focus.
  function editing() {
    var active = document.activeElement;
    return active && region.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName);
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
          region.innerHTML = fresh.innerHTML;
          region.setAttribute("data-updated", String(Date.now()));
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
