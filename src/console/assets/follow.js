// hazina console: follows the audit log live. Served as a file under the console's CSP
// (no inline script); the page works without it. New entries are added to the top of the
// entries table as they commit; every value is set as text, never as HTML.
"use strict";
(function () {
  const button = document.getElementById("follow");
  const status = document.getElementById("follow-status");
  const table = document.getElementById("live");
  if (!button || !table || !window.fetch || !window.TextDecoder) {
    return;
  }
  let controller = null;

  function say(words) {
    status.textContent = words;
  }

  // `label` is the column's name, which the phone layout shows beside the value.
  function cell(row, value, label) {
    const td = document.createElement("td");
    td.dataset.label = label;
    td.textContent = value === null || value === undefined ? "—" : String(value);
    row.appendChild(td);
    return td;
  }

  function target(t) {
    const parts = [];
    if (t.credential_id !== null) parts.push("credential " + t.credential_id);
    if (t.owner_id !== null) parts.push("owner " + t.owner_id);
    if (t.provider !== null) parts.push(t.provider);
    if (t.environment !== null) parts.push(t.environment);
    return parts.length ? parts.join(", ") : "—";
  }

  function add(entry) {
    if (typeof entry.seq !== "number") {
      return;
    }
    button.dataset.after = String(entry.seq);
    const row = document.createElement("tr");
    cell(row, entry.seq, "#");
    cell(row, entry.occurred_at, "When");
    cell(row, entry.actor.kind + " " + (entry.actor.name || ""), "Who");
    cell(row, entry.action + (entry.operation ? " (" + entry.operation + ")" : ""), "What");
    const outcome = cell(row, entry.outcome + (entry.reason ? ": " + entry.reason.replace(/_/g, " ") : ""), "Outcome");
    outcome.className = "outcome " + entry.outcome;
    cell(row, target(entry.target), "Target");
    cell(row, entry.source_ip, "From");
    cell(row, entry.reference, "Reference");
    table.tBodies[0].prepend(row);
  }

  async function follow(signal) {
    const after = encodeURIComponent(button.dataset.after || "0");
    const res = await fetch("/console/audit/live/?after=" + after, {
      signal: signal,
      credentials: "same-origin",
    });
    if (!res.ok || !res.body) {
      throw new Error("the server answered " + res.status);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    say("Following: new entries appear at the top of the table.");
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        break;
      }
      buffered += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, end).trim();
        buffered = buffered.slice(end + 1);
        if (line) {
          add(JSON.parse(line));
        }
      }
    }
    say("The server ended the stream.");
  }

  button.addEventListener("click", function () {
    if (controller) {
      controller.abort();
      controller = null;
      button.textContent = "Follow live";
      say("Stopped.");
      return;
    }
    controller = new AbortController();
    button.textContent = "Stop following";
    follow(controller.signal).catch(function (e) {
      if (e.name !== "AbortError") {
        say("Following stopped: " + e.message);
      }
      controller = null;
      button.textContent = "Follow live";
    });
  });
})();
