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
  // Owners' usernames by id: those the page named, and those asked for since.
  let names = {};
  try {
    names = JSON.parse(table.dataset.names || "{}") || {};
  } catch (e) {
    names = {};
  }

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

  // What an entry is about, by name as the page says it ("alice's mpesa sandbox
  // credential"), the ids on a quieter line; an owner not yet known is asked for.
  function fillTarget(td, t) {
    const scope = [t.provider, t.environment].filter((v) => v !== null).join(" ");
    const owner = t.owner_id !== null ? names[String(t.owner_id)] : undefined;
    const whose = t.owner_id === null ? null : owner !== undefined ? owner + "'s" : "owner " + t.owner_id + "'s";
    let words;
    if (t.credential_id !== null) words = [whose, scope, "credential"].filter((w) => w).join(" ");
    else if (whose !== null) words = scope ? whose + " " + scope : whose.replace(/'s$/, "");
    else words = scope || "—";
    td.textContent = words;
    const ids = [];
    if (t.credential_id !== null) ids.push("credential " + t.credential_id);
    if (t.owner_id !== null) ids.push("owner " + t.owner_id);
    if (ids.length) {
      td.appendChild(document.createElement("br"));
      const quiet = document.createElement("span");
      quiet.className = "muted";
      quiet.textContent = ids.join(", ");
      td.appendChild(quiet);
    }
    if (t.owner_id !== null && owner === undefined) {
      fetch("/console/audit/names/?owner=" + encodeURIComponent(String(t.owner_id)), { credentials: "same-origin" })
        .then((res) => (res.ok ? res.json() : {}))
        .then((found) => {
          const name = found[String(t.owner_id)];
          if (typeof name === "string") {
            names[String(t.owner_id)] = name;
            fillTarget(td, t);
          }
        })
        .catch(() => {});
    }
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
    fillTarget(cell(row, "", "Target"), entry.target);
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
