// The admin overview's actions: exposure per reviewer today, the items held now with requeue,
// reassign and release, and redelivery of failed final decisions. Each action asks first,
// sends the page's CSRF token, and is audited on the server.
"use strict";
(function () {
  const box = document.getElementById("admin-actions");
  if (!box) return;
  const base = document.body.dataset.base;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);

  async function call(method, path, body) {
    const r = await fetch(base + path, {
      method: method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (r.status === 401) { window.location.assign(base + "/login"); throw new Error("signed out"); }
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(data.detail || r.statusText);
    return data;
  }
  function say(text) { $("admin-status").textContent = text; }
  function cell(tr, value) { const td = document.createElement("td"); td.textContent = value; tr.appendChild(td); return td; }
  function button(label, aria, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.setAttribute("aria-label", aria);
    b.addEventListener("click", onClick);
    return b;
  }
  async function act(question, path, body, done) {
    if (!window.confirm(question)) return;
    try { const data = await call("POST", path, body); say(done(data)); }
    catch (err) { say("Not done: " + err.message); }
    refresh();
  }

  let accounts = [];
  async function refresh() {
    try {
      const [exposure, held, stats] = await Promise.all([
        call("GET", "/api/admin/exposure").catch(() => ({ reviewers: [] })),
        call("GET", "/api/admin/in-review"),
        call("GET", "/api/admin/stats"),
      ]);
      accounts = held.accounts;
      $("undelivered-count").textContent = stats.undelivered;
      $("exposure").tBodies[0].replaceChildren(...exposure.reviewers.map((d) => {
        const tr = document.createElement("tr");
        tr.dataset.reviewer = d.reviewer;
        for (const v of [d.reviewer, d.shown, d.critical, d.revealed, d.critical_since_break,
          d.breaks_taken + " / " + d.breaks_dismissed]) cell(tr, v);
        return tr;
      }));
      $("held").tBodies[0].replaceChildren(...held.items.map((h) => {
        const tr = document.createElement("tr");
        tr.dataset.reviewId = h.review_id;
        cell(tr, h.policy_id + " / " + h.category_id + " · job " + h.job_id);
        cell(tr, h.severity);
        cell(tr, h.reviewer);
        cell(tr, Math.round(h.seconds_left) + " s");
        const actions = cell(tr, "");
        const what = "job " + h.job_id;
        actions.append(
          button("Requeue", "Requeue " + what, () => act(
            "Take " + what + " back from " + h.reviewer + " and put it back in the queue?",
            "/api/admin/requeue", { review_id: h.review_id },
            (d) => d.requeued ? "Requeued " + what : what + " was not held any more")),
          " ",
          button("Release " + h.reviewer, "Release everything " + h.reviewer + " holds", () => act(
            "Take back everything " + h.reviewer + " holds?",
            "/api/admin/release", { reviewer: h.reviewer },
            (d) => "Released " + d.released.length + " item(s) from " + h.reviewer)),
          " ");
        const label = document.createElement("label");
        label.textContent = "Reassign to ";
        const select = document.createElement("select");
        select.className = "reassign-to";
        select.setAttribute("aria-label", "Reassign " + what + " to");
        for (const a of accounts) {
          if (a.reviewer === h.reviewer) continue;
          const o = document.createElement("option");
          o.value = a.username;
          o.textContent = a.username + " (" + a.role + ")";
          select.appendChild(o);
        }
        label.appendChild(select);
        actions.append(label, " ", button("Reassign", "Reassign " + what, () => act(
          "Give " + what + " to " + select.value + "?",
          "/api/admin/reassign", { review_id: h.review_id, username: select.value },
          (d) => "Reassigned " + what + " to " + select.value + " (" + d.reviewer + ")")));
        return tr;
      }));
    } catch (err) { say("Could not load the admin view: " + err.message); }
  }
  $("redeliver").addEventListener("click", () => act(
    "Hand on again every final decision whose delivery failed?", "/api/admin/redeliver", undefined,
    (d) => "Redelivered " + d.delivered + " of " + d.pending + " waiting decision(s)"));
  refresh();
  setInterval(refresh, 10000);
})();
