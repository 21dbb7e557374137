"use strict";
// The page's own subscription: SSE on the first stream, resumed by the
// browser with Last-Event-ID after a restart of lsmux.
const $ = (id) => document.getElementById(id);
let count = 0;

async function refreshStatus() {
  try {
    const res = await fetch("/v1/status");
    const st = await res.json();
    const rows = [];
    for (const s of st.streams) {
      for (const c of s.upstream) {
        const tr = document.createElement("tr");
        for (const v of [s.name + "#" + c.slot, c.state, new Date(c.since).toLocaleTimeString(), c.hits, c.lastError || ""]) {
          const td = document.createElement("td");
          td.textContent = v;
          tr.appendChild(td);
        }
        tr.children[1].className = "state-" + c.state;
        rows.push(tr);
      }
    }
    $("upstream").replaceChildren(...rows);
  } catch (e) { /* lsmux restarting: try again on the next tick */ }
}

async function start() {
  const streams = await (await fetch("/v1/streams")).json();
  if (!streams.length) return;
  const name = streams[0].name;
  $("stream").textContent = name;
  const es = new EventSource("/v1/streams/" + encodeURIComponent(name) + "/sse");
  es.addEventListener("hit", (ev) => {
    count++;
    $("count").textContent = count;
    const line = document.createElement("div");
    line.textContent = ev.lastEventId + "  " + ev.data.slice(0, 200);
    const tail = $("tail");
    tail.prepend(line);
    while (tail.childNodes.length > 200) tail.lastChild.remove();
  });
  refreshStatus();
  setInterval(refreshStatus, 1000);
}
start();
