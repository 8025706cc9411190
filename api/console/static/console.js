// The console's only script of its own: Enter sends, "/" inserts a canned reply, times in the
// browser's zone, waited times that keep counting, and the live channel's resume and reload.
// Everything else is htmx (static/vendor/, pinned, with its licence).
(function () {
  "use strict";
  var lastEventId = "";

  // htmx's SSE extension opens a NEW EventSource after an error, which would forget the
  // Last-Event-ID the browser keeps on its own reconnects: pass it in the URL instead.
  htmx.createEventSource = function (url) {
    if (lastEventId) {
      url += (url.indexOf("?") < 0 ? "?" : "&") + "last=" + encodeURIComponent(lastEventId);
    }
    return new EventSource(url, { withCredentials: true });
  };
  document.addEventListener("htmx:sseMessage", function (e) {
    if (e.detail && e.detail.lastEventId) lastEventId = e.detail.lastEventId;
  });
  document.addEventListener("htmx:sseOpen", function (e) {
    e.detail.source.addEventListener("reload", function () { window.location.reload(); });
  });

  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (!isNaN(d)) el.textContent = pad(d.getDate()) + "/" + pad(d.getMonth() + 1) + " " + pad(d.getHours()) + ":" + pad(d.getMinutes());
    });
  }
  function duration(s) {
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    return Math.floor(s / 3600) + " h " + pad(Math.floor((s % 3600) / 60));
  }
  function tickWaited() {
    document.querySelectorAll(".waited[data-waited]").forEach(function (el) {
      if (!el.dataset.shownAt) el.dataset.shownAt = String(Date.now());
      var s = parseInt(el.dataset.waited, 10) + Math.floor((Date.now() - parseInt(el.dataset.shownAt, 10)) / 1000);
      el.textContent = el.dataset.template.replace("{w}", duration(s));
    });
  }
  function toBottom() {
    var list = document.getElementById("conv-list");
    if (list) list.scrollTop = list.scrollHeight;
  }
  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    toBottom();
    setInterval(tickWaited, 5000);
  });
  document.addEventListener("htmx:oobAfterSwap", function (e) {
    localTimes(e.detail.target || document);
    if (e.detail.target && e.detail.target.id === "conv-list") toBottom();
  });
  // A conversation's state changed: its reply area is only replaced when it must change
  // (reply box <-> notice), never under an agent who is typing.
  document.addEventListener("htmx:oobBeforeSwap", function (e) {
    var target = e.detail.target;
    if (!target || target.id !== "reply-area") return;
    var now = target.querySelector("[data-mode]"), next = e.detail.fragment.querySelector("[data-mode]");
    if ((now ? now.dataset.mode : "") === (next ? next.dataset.mode : "")) e.detail.shouldSwap = false;
  });
  document.addEventListener("htmx:afterSwap", function (e) {
    localTimes(e.detail.target || document);
    var box = e.detail.target && e.detail.target.querySelector("[data-testid=reply-box]");
    if (box) box.focus();
  });

  // A file refused before it reached the console (nginx's 413 for a body over its own limit, a
  // 429, a 502 while the API restarts) brings no form to swap in: say it in the form anyway,
  // as the console's own refusals are said (templates/_media_form.html).
  document.addEventListener("htmx:responseError", function (e) {
    var form = e.detail.elt && e.detail.elt.closest && e.detail.elt.closest("[data-testid=media-upload-form]");
    if (!form) return;
    var status = e.detail.xhr ? e.detail.xhr.status : 0;
    form.querySelectorAll("[data-testid=media-upload-error], [data-testid=media-upload-sent]").forEach(function (el) { el.remove(); });
    var p = document.createElement("p");
    p.className = "error";
    p.setAttribute("role", "alert");
    p.dataset.testid = "media-upload-error";
    p.dataset.reason = status === 413 ? "file_too_large" : "http_" + status;
    p.textContent = status === 413 ? form.dataset.tooBig : form.dataset.failed.replace("{status}", String(status));
    form.appendChild(p);
  });

  // The reply box: Enter sends (Shift+Enter is a new line); "/word" offers canned replies.
  function menuOf(box) { return box.form && box.form.querySelector(".canned-menu"); }
  function choices(menu) { return Array.prototype.filter.call(menu.children, function (li) { return !li.hidden; }); }
  function insert(box, li) {
    box.value = li.dataset.text;
    menuOf(box).hidden = true;
    box.focus();
  }
  document.addEventListener("input", function (e) {
    var box = e.target;
    if (!box.matches || !box.matches("[data-testid=reply-box]")) return;
    var menu = menuOf(box);
    if (!menu) return;
    var m = /^\/(\S*)$/.exec(box.value);
    if (!m) { menu.hidden = true; return; }
    var any = false;
    Array.prototype.forEach.call(menu.children, function (li, i) {
      li.hidden = li.dataset.shortcut.indexOf(m[1].toLowerCase()) !== 0;
      li.classList.remove("active");
      any = any || !li.hidden;
    });
    var shown = choices(menu);
    if (shown.length) shown[0].classList.add("active");
    menu.hidden = !any;
  });
  document.addEventListener("keydown", function (e) {
    var box = e.target;
    if (!box.matches || !box.matches("[data-testid=reply-box]")) return;
    var menu = menuOf(box);
    var open = menu && !menu.hidden;
    if (open && (e.key === "ArrowDown" || e.key === "ArrowUp")) {
      var shown = choices(menu), at = shown.findIndex(function (li) { return li.classList.contains("active"); });
      if (at >= 0) shown[at].classList.remove("active");
      at = (at + (e.key === "ArrowDown" ? 1 : shown.length - 1)) % shown.length;
      shown[at].classList.add("active");
      e.preventDefault();
      return;
    }
    if (open && (e.key === "Escape")) { menu.hidden = true; return; }
    if ((e.key === "Enter" && !e.shiftKey) || (open && e.key === "Tab")) {
      e.preventDefault();
      var active = open && menu.querySelector("li.active:not([hidden])");
      if (active) { insert(box, active); return; }
      if (e.key === "Enter" && box.value.trim()) box.form.requestSubmit();
    }
  });
  document.addEventListener("click", function (e) {
    var li = e.target.closest && e.target.closest(".canned-menu li");
    if (!li) return;
    insert(li.closest("form").querySelector("[data-testid=reply-box]"), li);
  });
})();
