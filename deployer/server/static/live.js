// The environment page, live: Server-Sent Events from /ui/APP/ENV/events update the release, its checks, the
// log and the history without a reload. Only textContent is written: nothing a record holds becomes markup.
"use strict";
(function () {
  const root = document.getElementById("environment");
  if (!root || !window.EventSource) return;
  const byId = (id) => document.getElementById(id);
  const cell = (row, text, className) => {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  };

  function showRelease(release) {
    byId("revision").textContent = release.revision;
    byId("result").textContent = release.result;
    byId("result").className = "result " + release.result;
    byId("phase").textContent = release.phase;
    byId("commit").textContent = release.commit;
    byId("subject").textContent = release.subject;
    byId("reason").textContent = release.reason;
    byId("weight").value = release.canary;
    byId("weight").textContent = release.canary + "%";
    byId("weights").textContent = "stable " + release.stable + "% / canary " + release.canary + "%";
    const actions = byId("actions");
    if (actions) actions.hidden = !release.pending;
    const body = byId("rounds").tBodies[0];
    body.replaceChildren();
    for (const round of release.rounds) {
      for (const check of round.checks) {
        const row = document.createElement("tr");
        row.className = check.ok ? "ok" : "failed";
        cell(row, String(round.round));
        cell(row, round.weight + "%");
        cell(row, check.name);
        cell(row, check.value || check.message);
        cell(row, check.limit);
        cell(row, check.ok ? "pass" : "FAIL");
        body.appendChild(row);
      }
    }
  }

  function showHistory(state) {
    byId("live").textContent = state.live === null ? "none" : String(state.live);
    const body = byId("history").tBodies[0];
    const form = byId("rollback-form");
    body.replaceChildren();
    for (const h of state.history) {
      const row = document.createElement("tr");
      cell(row, String(h.revision));
      const code = document.createElement("code");
      code.textContent = h.commit;
      cell(row, "").appendChild(code);
      cell(row, h.pusher);
      cell(row, h.started);
      const result = document.createElement("span");
      result.className = "result " + h.result;
      result.textContent = h.result;
      cell(row, "").appendChild(result);
      cell(row, h.duration);
      cell(row, h.reason);
      if (form) {
        const action = cell(row, "");
        if (h.rollback) {
          const copy = form.content.firstElementChild.cloneNode(true);
          copy.querySelector("input[name=revision]").value = String(h.revision);
          copy.querySelector("button").textContent = "Roll back to " + h.revision;
          action.appendChild(copy);
        }
      }
      body.appendChild(row);
    }
  }

  const log = byId("log");
  const events = new EventSource(root.dataset.events);
  events.addEventListener("state", (message) => {
    const state = JSON.parse(message.data);
    if (state.release) showRelease(state.release);
    showHistory(state);
    root.dataset.updated = String(Date.now());
  });
  events.addEventListener("log", (message) => {
    const line = JSON.parse(message.data);
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.appendChild(document.createTextNode(line + "\n"));
    if (atEnd) log.scrollTop = log.scrollHeight;
  });
})();
