// The live log of a local build on its page (vendored, no build step): `pre#log` is filled from
// the Server-Sent Events of its `data-log-src` (`log` events carry a JSON string of text, `end`
// says the build is final and its log complete). With "follow" (`#log-follow`) checked, the
// log stays scrolled to its end. A page whose log appears later (live.js swapped it in) is
// attached on `prx:live-updated`.
(function () {
  "use strict";
  if (!window.EventSource) {
    return;
  }

  function attach() {
    var pre = document.getElementById("log");
    var src = pre && pre.getAttribute("data-log-src");
    if (!src || pre.getAttribute("data-log-state")) {
      return;
    }
    var follow = document.getElementById("log-follow");
    var source = new EventSource(src);
    pre.setAttribute("data-log-state", "streaming");

    source.addEventListener("log", function (event) {
      pre.appendChild(document.createTextNode(JSON.parse(event.data)));
      if (follow && follow.checked) {
        pre.scrollTop = pre.scrollHeight;
      }
    });
    source.addEventListener("end", function () {
      source.close();
      pre.setAttribute("data-log-state", "complete");
    });
    // The browser reconnects by itself (resuming at the last event id) unless the answer was an
    // error: then the log is not available and the reason is the answer's text.
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) {
        pre.setAttribute("data-log-state", "unavailable");
        fetch(src, { credentials: "same-origin" })
          .then(function (response) {
            return response.ok ? "" : response.text();
          })
          .then(function (text) {
            if (text) {
              pre.appendChild(document.createTextNode("\n[" + text + "]\n"));
            }
          })
          .catch(function () {});
      }
    });
    if (follow) {
      follow.addEventListener("change", function () {
        if (follow.checked) {
          pre.scrollTop = pre.scrollHeight;
        }
      });
    }
  }

  attach();
  document.addEventListener("prx:live-updated", attach);
})();
