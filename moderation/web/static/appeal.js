// Appeal items on the review page: show the user's statement, the decision appealed (with the
// verdict's explanation) and the earlier decisions; decide with k (uphold) or o (overturn) and
// a reason code. review.js claims, shows the image and records the decision ("review:decide").
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const panel = $("appeal");
  if (!panel) return;
  // The first-review actions an appeal does not take (it is upheld or overturned).
  const firstReview = ["allow-key", "btn-remove", "bank-key", "escalate-key"];
  let item = null;      // the appeal item shown (null: the item shown is no appeal)
  let choosing = null;  // "uphold" | "overturn" while its reason is picked

  function status(text) { $("status").textContent = text; }
  function when(unixS) { return new Date(unixS * 1000).toISOString().replace("T", " ").slice(0, 16) + " UTC"; }

  function show(next) {
    item = next && next.appeal ? next : null;
    cancel();
    panel.hidden = !item;
    for (const id of firstReview) { const b = $(id); if (b) b.hidden = Boolean(item); }
    if (!item) return;
    const a = item.appeal;
    $("appeal-filed").textContent = "filed " + when(a.filed_at);
    $("appeal-against").textContent = (a.appealed_kind === "automated" ? "the automated " : "a reviewer's ")
      + a.appealed_decision + (a.appealed_reason_code ? " (" + a.appealed_reason_code + ")" : "");
    $("appeal-explanation").textContent = item.explanation;
    $("appeal-statement").textContent = a.statement;
    const earlier = $("appeal-earlier");
    earlier.replaceChildren(...(a.earlier.length ? a.earlier : [null]).map((d) => {
      const li = document.createElement("li");
      li.textContent = d === null ? "none: the model decided alone"
        : d.decision + (d.reason_code ? " (" + d.reason_code + ")" : "") + " by "
          + d.reviewers.join(" + ") + " · " + String(d.decided_at).slice(0, 16).replace("T", " ");
      return li;
    }));
  }

  function reasons() { return item ? item.reasons || [] : []; }

  function choose(decision) {
    if (!item) return;
    choosing = decision;
    $("appeal-reason-title").textContent = (decision === "overturn"
      ? "Overturn: the restriction is reversed. Why?" : "Uphold: the decision stands. Why?");
    $("appeal-reason-list").replaceChildren(...reasons().map((r, i) => {
      const li = document.createElement("li");
      li.setAttribute("role", "option");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "reason";
      const k = document.createElement("kbd"); k.textContent = String(i + 1);
      const label = document.createElement("span"); label.textContent = r.label;
      const code = document.createElement("code"); code.textContent = r.code;
      b.append(k, " ", label, " ", code);
      b.addEventListener("click", () => pick(r.code));
      li.appendChild(b);
      return li;
    }));
    $("appeal-reasons").hidden = false;
    status((decision === "overturn" ? "Overturn" : "Uphold") + ": pick a reason (a number), Esc cancels");
  }

  function cancel() { choosing = null; $("appeal-reasons").hidden = true; }

  function pick(code) {
    if (!choosing || !item) return;
    const decision = choosing;
    cancel();
    document.dispatchEvent(new CustomEvent("review:decide", { detail: { decision: decision, reason_code: code } }));
  }

  // Before review.js's keys (capture on window): an appeal takes k / o and a reason, never the
  // first-review keys.
  window.addEventListener("keydown", (event) => {
    if (!item || $("item").hidden || event.ctrlKey || event.metaKey || event.altKey) return;
    if (!$("help").hidden || !$("reason-panel").hidden) return;
    const key = event.key;
    let handled = true;
    if (choosing) {
      if (key === "Escape") { cancel(); status(""); }
      else if (/^[1-9]$/.test(key)) { const r = reasons()[Number(key) - 1]; if (r) pick(r.code); }
      else handled = false;
    } else if (key === "k" && !event.repeat) choose("uphold");
    else if (key === "o" && !event.repeat) choose("overturn");
    else if (["a", "r", "b", "e"].includes(key)) status("An appeal is upheld (k) or overturned (o)");
    else handled = false;
    if (handled) { event.preventDefault(); event.stopImmediatePropagation(); }
  }, true);

  // Nothing to review while appeals wait: say why (the reviewer decided them before, or skipped
  // them), so an empty page with a waiting appeal queue is not a mystery.
  const empty = $("empty");
  const barred = document.createElement("p");
  barred.id = "appeal-barred";
  barred.className = "muted";
  barred.hidden = true;
  empty.appendChild(barred);
  async function explainEmpty() {
    if (empty.hidden) { barred.hidden = true; return; }
    try {
      const r = await fetch(document.body.dataset.base + "/api/overview", { credentials: "same-origin" });
      if (!r.ok) return;
      const data = await r.json();
      const waiting = data.queues.filter((q) => q.queue === "appeal")
        .reduce((n, q) => n + q.waiting, 0);
      barred.textContent = waiting > 0
        ? waiting + " appeal(s) wait, none for you: an appeal goes to a different reviewer than "
          + "whoever decided the item before (or you skipped it)"
        : "";
      barred.hidden = empty.hidden || waiting === 0;
    } catch (err) { /* a hint only */ }
  }
  new MutationObserver(explainEmpty).observe(empty, { attributes: true, attributeFilter: ["hidden"] });
  explainEmpty();

  $("appeal-uphold").addEventListener("click", () => choose("uphold"));
  $("appeal-overturn").addEventListener("click", () => choose("overturn"));
  document.addEventListener("review:item", (event) => show(event.detail));
})();
