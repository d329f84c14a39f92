// knotd's pages: copy buttons, a search box that filters as you type, and
// the live event view. The pages work without it, except those three.
"use strict";

function bindCopyButtons(root) {
  for (const button of root.querySelectorAll("button.copy")) {
    button.hidden = false;
    button.addEventListener("click", async () => {
      const text = button.dataset.copy;
      try {
        await navigator.clipboard.writeText(text);
      } catch (_) {
        // No clipboard API (plain http): copy through a selection.
        const area = document.createElement("textarea");
        area.value = text;
        document.body.appendChild(area);
        area.select();
        document.execCommand("copy");
        area.remove();
      }
      button.textContent = "copied";
      setTimeout(() => { button.textContent = "copy"; }, 1500);
    });
  }
}

function bindSearch() {
  const input = document.getElementById("q");
  const rows = document.getElementById("rows");
  if (!input || !rows) return;
  let timer = null;
  let asked = 0;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const q = input.value;
      const mine = ++asked;
      let html;
      try {
        const response = await fetch("/?rows=1&q=" + encodeURIComponent(q));
        if (!response.ok) return;
        html = await response.text();
      } catch (_) {
        return; // The form still works: Enter submits it.
      }
      // Only the answer to the newest query is shown.
      if (mine !== asked) return;
      // Server-rendered and escaped, from this page's own origin.
      rows.innerHTML = html;
      bindCopyButtons(rows);
      history.replaceState(null, "", q ? "/?q=" + encodeURIComponent(q) : "/");
    }, 120);
  });
}

function bindLive() {
  const list = document.querySelector("ol.events[data-live]");
  if (!list || !window.EventSource) return;
  const source = new EventSource(list.dataset.live);
  list.classList.add("live");
  source.addEventListener("node", (message) => {
    const event = JSON.parse(message.data);
    const item = document.createElement("li");
    const time = document.createElement("time");
    time.textContent = event.time;
    item.append(time, " " + event.text);
    item.classList.add("new");
    list.prepend(item);
    while (list.children.length > 200) list.lastElementChild.remove();
  });
  source.addEventListener("error", () => list.classList.remove("live"));
  source.addEventListener("open", () => list.classList.add("live"));
}

document.addEventListener("DOMContentLoaded", () => {
  bindCopyButtons(document);
  bindSearch();
  bindLive();
});
