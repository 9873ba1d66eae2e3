// The overview page: queue depth per policy, oldest age, my decisions today (admins: everyone's).
"use strict";
(function () {
  const base = document.body.dataset.base;
  const $ = (id) => document.getElementById(id);

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 120) return Math.round(seconds) + " s";
    if (seconds < 7200) return Math.round(seconds / 60) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.appendChild(td); }
    return tr;
  }

  async function get(path) {
    const r = await fetch(base + path, { credentials: "same-origin" });
    if (r.status === 401) { window.location.assign(base + "/login"); throw new Error("signed out"); }
    if (!r.ok) throw new Error(r.statusText);
    return r.json();
  }

  async function refresh() {
    const data = await get("/api/overview");
    $("mine").textContent = data.my_decisions_today;
    const body = $("queues").tBodies[0];
    body.replaceChildren(...data.queues.map((q) => row([q.queue, q.policy_id, q.waiting, q.in_review, age(q.oldest_age_s)])));
    if ($("admin")) {
      const admin = await get("/api/admin/stats");
      const rows = Object.entries(admin.decisions_today).sort((a, b) => b[1] - a[1]);
      $("reviewers").tBodies[0].replaceChildren(...rows.map(([who, n]) => row([who, n])));
      $("undelivered").textContent = admin.undelivered;
    }
  }
  refresh();
  setInterval(refresh, 10000);
})();
