// The review page: claim the next item, show it blurred, decide with one key, repeat.
"use strict";
(function () {
  const base = document.body.dataset.base;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);
  const skipAwayS = Number($("item").dataset.skipAwayS) || 0;
  const leaseS = Number($("item").dataset.leaseS) || 300;
  const image = $("image");
  let current = null;      // the claimed item payload
  let leaseEnd = 0;        // local clock, ms
  let choosingReason = false;
  let bankTarget = null;   // "remove and add to bank": the bank chosen with b
  let choosingBank = false;
  let busy = false;
  let pollTimer = null;
  let revealed = false;    // the image was unblurred at least once (required for critical items)
  let revealSent = null;   // the request recording that on the server (a decision waits for it)
  let last = null;         // the last decision: {review_id, token, label, until (ms)}

  function status(text) { $("status").textContent = text; }

  async function api(path, body) {
    const response = await fetch(base + path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {}),
    });
    if (response.status === 401) { window.location.assign(base + "/login"); throw new Error("signed out"); }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) { const e = new Error(data.detail || response.statusText); e.code = data.code; throw e; }
    return data;
  }

  function text(id, value) { $(id).textContent = value; }

  // The queue picker (reviewers allowed on several queues): the choice is kept in this browser.
  const picker = $("queue-picker");
  const pickerKey = "review.queues";
  function chosenQueues() {
    if (!picker) return null;
    const boxes = Array.from(picker.querySelectorAll("input[name=queue]"));
    const checked = boxes.filter((b) => b.checked).map((b) => b.value);
    return checked.length ? checked : null;
  }
  if (picker) {
    let saved = null;
    try { saved = JSON.parse(window.localStorage.getItem(pickerKey) || "null"); } catch (err) { saved = null; }
    if (Array.isArray(saved) && saved.length) {
      for (const b of picker.querySelectorAll("input[name=queue]")) b.checked = saved.includes(b.value);
    }
    picker.addEventListener("change", () => {
      try { window.localStorage.setItem(pickerKey, JSON.stringify(chosenQueues() || [])); } catch (err) { /* private mode */ }
      if (!current) next();
    });
  }
  async function queueCounts() {
    if (!picker) return;
    try {
      const r = await fetch(base + "/api/overview", { credentials: "same-origin" });
      if (!r.ok) return;
      const data = await r.json();
      const totals = {};
      for (const q of data.queues) {
        const t = totals[q.queue] || (totals[q.queue] = { waiting: 0, review: 0, oldest: null });
        t.waiting += q.waiting;
        t.review += q.in_review;
        if (q.oldest_age_s !== null && (t.oldest === null || q.oldest_age_s > t.oldest)) t.oldest = q.oldest_age_s;
      }
      for (const span of picker.querySelectorAll("[data-queue-count]")) {
        const t = totals[span.dataset.queueCount];
        span.textContent = t
          ? "(" + (t.waiting + t.review) + " open: " + t.waiting + " waiting, " + t.review + " in review"
            + (t.oldest !== null ? ", oldest " + Math.round(t.oldest / 60) + " min" : "") + ")"
          : "(none open)";
      }
    } catch (err) { /* counts are a hint */ }
  }
  queueCounts();
  setInterval(queueCounts, 15000);

  function render(item) {
    current = item;
    revealed = Boolean(item.revealed);
    revealSent = null;
    choosingReason = false;
    choosingBank = false;
    bankTarget = null;
    closeReasons();
    image.classList.add("blur");
    // Only the exact bytes that were scored are ever shown; when they are gone or do not verify
    // there is no image, and the item can be removed or escalated, never allowed.
    const problem = item.image_problem;
    $("no-image").hidden = !problem;
    text("no-image", problem || "");
    $("allow-key").disabled = Boolean(problem);
    $("allow-key").title = problem ? "The scored image is not available: remove or escalate" : "";
    image.hidden = Boolean(problem);
    if (problem) image.removeAttribute("src"); else image.src = item.image_url;
    text("category", item.policy_id + " / " + item.category_id);
    const sev = $("severity");
    sev.textContent = item.severity;
    sev.className = "sev " + item.severity;
    text("score", item.score.toFixed(3));
    text("thresholds", item.thresholds
      ? "(review ≥ " + item.thresholds.review + ", block ≥ " + item.thresholds.block + ")" : "");
    text("policy", item.policy_id + " v" + item.policy_version + " · waited " + Math.round(item.age_s) + " s");
    text("category-text", item.policy_text.category_description);
    text("prompts", item.policy_text.prompts.join(", "));
    text("benign", item.policy_text.benign_prompts.join(", "));
    // A bank category has no prompts: say nothing rather than "Looks for: ".
    $("prompts").parentElement.hidden = item.policy_text.prompts.length === 0;
    $("benign").parentElement.hidden = item.policy_text.benign_prompts.length === 0;
    text("signal", item.signal ? "(" + item.signal + ")" : "");
    const plain = $("plain");
    plain.replaceChildren(...(item.plain_reasons || []).map((line) => {
      const li = document.createElement("li"); li.textContent = line; return li;
    }));
    const scores = $("category-scores").tBodies[0];
    scores.replaceChildren(...(item.categories || []).map((c) => {
      const tr = document.createElement("tr");
      if (c.deciding) tr.className = "deciding";
      const name = document.createElement("th");
      name.scope = "row";
      name.textContent = c.category_id + " (" + c.severity + ")";
      const score = document.createElement("td");
      const meter = document.createElement("meter");
      meter.min = 0; meter.max = 1; meter.value = c.score;
      meter.low = c.review_threshold; meter.high = c.block_threshold; meter.optimum = 0;
      meter.setAttribute("aria-label", c.category_id + " score " + c.score.toFixed(2));
      score.append(meter, " " + c.score.toFixed(2));
      const bands = document.createElement("td");
      bands.textContent = c.review_threshold.toFixed(2) + " / " + c.block_threshold.toFixed(2);
      tr.append(name, score, bands);
      return tr;
    }));
    const matches = $("matches");
    matches.replaceChildren();
    for (const e of item.evidence) {
      const li = document.createElement("li");
      li.textContent = e.signal === "hash_bank" ? bankEvidence(e)
        : e.signal === "text" && window.textEvidence ? window.textEvidence(e) : genericEvidence(e);
      if (e.signal === "hash_bank" && e.details && e.details.entry_id !== undefined) {
        li.append(" ", entryButton(e.details, "confirm", "Confirm entry"),
          " ", entryButton(e.details, "disable", "Disable entry"));
      }
      matches.appendChild(li);
    }
    const targets = item.bank_targets || [];
    // Always there (no layout shift between items); disabled where nothing can be banked.
    $("bank-key").disabled = targets.length === 0;
    $("bank-key").title = targets.length ? "" : "No bank takes this image (no usable PDQ hash)";
    text("bank-name", targets.join(" / "));
    text("pdq", item.content_pdq
      ? "PDQ " + item.content_pdq.slice(0, 16) + "… quality " + item.content_pdq_quality : "");
    $("second").hidden = !item.second_review;
    $("escalated").hidden = item.queue !== "escalation";
    $("escalate-key").disabled = item.queue === "escalation";
    $("reveal-needed").hidden = !needsReveal();
    leaseEnd = Date.now() + item.seconds_left * 1000;
    $("empty").hidden = true;
    $("item").hidden = false;
    tick();
    // filmstrip.js shows a video's sampled frames and timeline
    document.dispatchEvent(new CustomEvent("review:item", { detail: item }));
  }

  function fmt(v) {
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(2);
    return v === null || v === undefined ? "–" : String(v);
  }

  function genericEvidence(e) {
    const extra = Object.entries(e.details || {}).map(([k, v]) => k + "=" + fmt(v)).join(", ");
    return e.label + " — " + e.score.toFixed(2) + (extra ? " (" + extra + ")" : "");
  }

  // Confirm (keeps acting, never flood-quarantined) or disable (removed from its bank) the
  // matched bank entry: POST /api/banks/entry, audited with this reviewer's pseudonym.
  function entryButton(d, action, label) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "entry-" + action;
    b.textContent = label;
    b.setAttribute("aria-label", label + " #" + d.entry_id + " of bank " + d.bank);
    b.addEventListener("click", async () => {
      const reason = window.prompt(label + " #" + d.entry_id + " (" + d.bank + "): reason", "");
      if (reason === null) return;
      b.disabled = true;
      try {
        const r = await api("/api/banks/entry",
          { bank: d.bank, entry_id: d.entry_id, action: action, reason: reason });
        status("bank " + d.bank + " entry #" + d.entry_id + ": " + r.entry.state);
      } catch (err) {
        b.disabled = false;
        status("bank entry not changed: " + err.message);
      }
    });
    return b;
  }

  // A bank match: which bank and entry, how close, and the entry's metadata.
  function bankEvidence(e) {
    const d = e.details || {};
    if (d.entry_id === undefined) return e.label;
    const parts = [
      "bank " + d.bank + " entry #" + d.entry_id,
      "distance " + d.distance + "/256 (≤ " + d.max_distance + ")",
      "quality " + fmt(d.quality),
    ];
    if (d.label) parts.push("label: " + d.label);
    if (d.source) parts.push("source: " + d.source);
    if (d.added_at) parts.push("added " + String(d.added_at).slice(0, 10));
    if (d.reference_id) parts.push("ref " + d.reference_id);
    if (d.variant && d.variant !== "frame") parts.push("matched " + d.variant);
    return parts.join(" · ");
  }

  // Critical items need one look at the image before "allow" or "remove" (escalate needs none);
  // an item without its image cannot be looked at.
  function needsReveal() {
    return Boolean(current && current.severity === "critical" && !current.image_problem && !revealed);
  }

  function itemLabel(item) {
    return item.policy_id + " / " + item.category_id + " · job " + item.job_id.slice(0, 8);
  }

  function showLast() {
    const box = $("last");
    if (!last) { box.hidden = true; return; }
    const left = Math.max(0, Math.ceil((last.until - Date.now()) / 1000));
    box.hidden = false;
    $("undo").hidden = left <= 0;
    box.classList.toggle("done", left <= 0);
    text("undo-left", "(" + left + " s)");
  }

  function clock(left) { return Math.floor(left / 60) + ":" + String(left % 60).padStart(2, "0"); }

  // The lease: a warning (with x to renew it) in its last minute or third, then a plain
  // message once it has run out (the item went back to the queue).
  function tick() {
    showLast();
    if (!current) { $("lease-warning").hidden = true; return; }
    const left = Math.max(0, Math.round((leaseEnd - Date.now()) / 1000));
    const lease = $("lease");
    lease.textContent = left > 0 ? clock(left) : "expired";
    lease.classList.toggle("low", left < 30);
    const warnAt = Math.min(60, leaseS / 3);
    $("lease-warning").hidden = !(left > 0 && left <= warnAt);
    text("lease-left", clock(left));
    if (left <= 0 && !current.expiredShown) {
      current.expiredShown = true;
      status("Your lease on " + itemLabel(current) + " ran out: it went back to the queue. "
        + "Press n for the next item");
    }
  }

  // Every few seconds: is the item still ours? (An admin may take it back: the reviewer is told
  // at once, not when a decision fails.) /api/next returns the lease the reviewer holds.
  async function heartbeat() {
    if (!current || busy || choosingReason || choosingBank || current.expiredShown) return;
    if (leaseEnd - Date.now() < 2000) return;  // about to run out: the lease message covers it
    const item = current;
    try {
      const data = await api("/api/next", { queues: chosenQueues() });
      if (current !== item || busy) return;
      if (data.item && data.item.token === item.token) return;
      status("An admin took " + itemLabel(item) + " back: it is not yours any more."
        + (data.item ? " Here is the next item." : ""));
      if (data.item) render(data.item);
      else { current = null; $("item").hidden = true; $("empty").hidden = false; pollTimer = setTimeout(next, 5000); }
    } catch (err) { /* the next decision reports it */ }
  }
  setInterval(heartbeat, 5000);

  async function extend() {
    if (!current || busy) return;
    const item = current;
    try {
      const data = await api("/api/extend", { review_id: item.review_id, token: item.token });
      if (current !== item) return;
      leaseEnd = Date.now() + data.seconds_left * 1000;
      status("Kept: " + itemLabel(item) + " is yours for another " + clock(Math.round(data.seconds_left)));
      tick();
    } catch (err) {
      status(err.code === "review_lease_expired"
        ? "Too late: " + itemLabel(item) + " already went back to the queue. Press n for the next item"
        : "Could not keep it: " + err.message);
    }
  }
  setInterval(tick, 1000);

  async function next() {
    if (pollTimer) { clearTimeout(pollTimer); pollTimer = null; }
    try {
      const data = await api("/api/next", { queues: chosenQueues() });
      if (data.item) { render(data.item); }
      else {
        current = null;
        $("item").hidden = true;
        $("empty").hidden = false;
        pollTimer = setTimeout(next, 5000);
      }
    } catch (err) { status("Could not load the next item: " + err.message); pollTimer = setTimeout(next, 5000); }
  }

  async function decide(decision, reasonCode, bank) {
    if (!current || busy) return;
    if (decision !== "escalate" && needsReveal()) {
      status("Critical item: look at the image first (hold space), or escalate");
      return;
    }
    busy = true;
    const item = current;
    try {
      if (revealSent) await revealSent;
      const data = await api("/api/decide", {
        review_id: item.review_id, token: item.token, decision: decision,
        reason_code: reasonCode || null, add_to_bank: bank || null,
      });
      const banked = bank ? " + added to bank " + bank : "";
      const reason = reasonCode ? " (" + reasonCode + ")" : "";
      const what = (data.status === "final" ? "Recorded: " + data.decision + reason + banked
        : data.status === "escalated" ? "Escalated: sent to the escalation queue"
        : data.status === "disagreement" ? "Recorded: " + data.decision + reason
          + " — it disagrees with the first reviewer: sent to the escalation queue with both decisions"
        : "Recorded: remove" + reason + banked + " (waits for a second reviewer)")
        + " — " + itemLabel(item);
      status(what);
      last = data.undo_s > 0
        ? { review_id: item.review_id, token: item.token, label: what, until: Date.now() + data.undo_s * 1000 }
        : null;
      showLast();
    } catch (err) {
      status("Not recorded: " + err.message);
    } finally {
      busy = false;
      current = null;
      await next();
    }
  }

  // appeal.js decides an appeal item (uphold / overturn with a reason code) through here.
  document.addEventListener("review:decide", (e) => { decide(e.detail.decision, e.detail.reason_code); });

  // Take the last decision back (within the undo window): that item comes back, leased again;
  // the item shown meanwhile goes back to the queue.
  async function undo() {
    if (!last || busy) return;
    if (Date.now() > last.until) { status("Too late to undo: the decision is final"); return; }
    busy = true;
    const previous = last;
    try {
      const data = await api("/api/undo", {
        review_id: previous.review_id, token: previous.token,
        holding: current ? current.review_id : null,
      });
      last = null;
      showLast();
      if (pollTimer) { clearTimeout(pollTimer); pollTimer = null; }
      render(data.item);
      status("Undone: " + itemLabel(data.item) + " is back; decide again");
    } catch (err) {
      last = null;
      showLast();
      status("Could not undo: " + err.message);
      if (!current) await next();
    } finally { busy = false; }
  }

  async function skip() {
    if (!current || busy) return;
    busy = true;
    const item = current;
    try {
      await api("/api/skip", { review_id: item.review_id });
      status("Skipped: " + itemLabel(item) + " (back to the queue for others; not shown to you again for "
        + Math.round(skipAwayS / 60) + " min)");
    }
    catch (err) { status("Skip failed: " + err.message); }
    finally { busy = false; current = null; await next(); }
  }

  // The reason picker: every reason of the policy (this category's first), readable labels,
  // type-ahead; the first nine visible ones have number keys, Enter takes the first.
  let shown = [];
  function fillReasons() {
    const filter = $("reason-filter").value.trim().toLowerCase();
    const all = current ? current.reasons || current.reason_codes.map((c) => ({ code: c, label: c })) : [];
    shown = all.filter((r) => !filter || (r.label + " " + r.code).toLowerCase().includes(filter));
    const list = $("reasons");
    list.replaceChildren(...shown.map((r, i) => {
      const li = document.createElement("li");
      li.setAttribute("role", "option");
      li.id = "reason-" + i;
      const b = document.createElement("button");
      b.type = "button";
      b.className = "reason" + (r.own ? " own" : "");
      if (i < 9) { const k = document.createElement("kbd"); k.textContent = String(i + 1); b.append(k, " "); }
      const label = document.createElement("span"); label.textContent = r.label;
      const code = document.createElement("code"); code.textContent = r.code;
      b.append(label, " ", code);
      b.setAttribute("aria-label", r.label + " (" + r.code + ")");
      b.addEventListener("click", () => pickReason(r.code));
      li.appendChild(b);
      return li;
    }));
    $("reason-filter").setAttribute("aria-activedescendant", shown.length ? "reason-0" : "");
    text("reason-count", shown.length === all.length ? all.length + " reasons"
      : shown.length + " of " + all.length + " reasons match");
  }
  function chooseReason() {
    if (!current) return;
    choosingReason = true;
    $("reason-filter").value = "";
    text("reason-bank", bankTarget ? " (and add to bank " + bankTarget + ")" : "");
    fillReasons();
    $("reason-panel").hidden = false;
    $("reason-filter").focus();
    status((bankTarget ? "Remove and add to bank " + bankTarget : "Remove")
      + ": type to filter, then a number or Enter (Esc cancels)");
  }
  function closeReasons() {
    choosingReason = false;
    $("reason-panel").hidden = true;
    if (document.activeElement === $("reason-filter")) $("reason-filter").blur();
  }
  function pickReason(code) {
    if (!choosingReason || !code) return;
    const bank = bankTarget;
    closeReasons();
    bankTarget = null;
    decide("remove", code, bank);
  }
  $("reason-filter").addEventListener("input", fillReasons);

  // The help overlay: every key.
  let helpReturn = null;
  function help(open) {
    const box = $("help");
    if (open) { helpReturn = document.activeElement; box.hidden = false; $("help-close").focus(); }
    else { box.hidden = true; if (helpReturn && helpReturn.focus) helpReturn.focus(); helpReturn = null; }
  }
  $("help-close").addEventListener("click", () => help(false));

  // "Remove and add to bank": the image's PDQ hash goes into the bank once the removal is final.
  function chooseBank() {
    const targets = current.bank_targets || [];
    if (targets.length === 0) { status("This image has no usable PDQ hash: it cannot be banked"); return; }
    if (targets.length === 1) { bankTarget = targets[0]; chooseReason(); return; }
    choosingBank = true;
    status("Add to which bank? " + targets.map((b, i) => "[" + (i + 1) + "] " + b).join("  ") + " (Esc cancels)");
  }

  // The first unblur of an item is recorded on the server, which refuses "allow" and "remove"
  // on a critical item its reviewer never looked at.
  function unblur(on) {
    image.classList.toggle("blur", !on);
    if (on && current && !revealed && !current.image_problem) {
      revealed = true;
      $("reveal-needed").hidden = true;
      revealSent = api("/api/reveal", { review_id: current.review_id }).catch(() => null);
    }
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    if (!$("help").hidden) {
      if (key === "Escape" || key === "?") { event.preventDefault(); help(false); }
      return;
    }
    if (choosingReason) {
      const filter = $("reason-filter");
      if (key === "Escape") { event.preventDefault(); closeReasons(); bankTarget = null; status(""); }
      else if (key === "Enter") { event.preventDefault(); if (shown[0]) pickReason(shown[0].code); }
      else if (/^[1-9]$/.test(key)) {  // a number picks among the reasons shown
        event.preventDefault();
        const r = shown[Number(key) - 1];
        if (r) pickReason(r.code);
      } else if (document.activeElement !== filter && key.length === 1 && key !== " ") {
        filter.focus();  // type-ahead from anywhere in the panel
      }
      return;
    }
    if (event.target instanceof HTMLInputElement && event.target.type === "text") return;
    if (key === "?") { event.preventDefault(); help(true); return; }
    if (key === "u" && !event.repeat && !choosingBank && !choosingReason) {
      event.preventDefault(); undo(); return;
    }
    if (!current) return;
    if (key === " ") { event.preventDefault(); unblur(true); return; }
    if (event.repeat) return;
    if (choosingBank) {
      const targets = current.bank_targets || [];
      if (/^[1-9]$/.test(key) && targets[Number(key) - 1]) {
        choosingBank = false; bankTarget = targets[Number(key) - 1]; chooseReason();
      } else if (key === "Escape") { choosingBank = false; bankTarget = null; status(""); }
      return;
    }
    switch (key) {
      case "a":
        if (current.image_problem) { status("The scored image is not available: remove or escalate"); break; }
        decide("allow"); break;
      case "e":
        if (current.queue === "escalation") { status("Already in the escalation queue: allow or remove it"); break; }
        decide("escalate"); break;
      case "r": bankTarget = null; chooseReason(); break;
      case "b": chooseBank(); break;
      case "s": skip(); break;
      case "x": extend(); break;
      case "n": if (current.expiredShown) { current = null; next(); } break;
      case "v": unblur(image.classList.contains("blur")); break;
      case "g": image.classList.toggle("grey"); break;
      default: return;
    }
    event.preventDefault();
  });
  document.addEventListener("keyup", (event) => { if (event.key === " ") unblur(false); });
  image.addEventListener("mousedown", (event) => { event.preventDefault(); unblur(true); });
  document.addEventListener("mouseup", () => { if (current) unblur(false); });
  image.addEventListener("load", () => { image.alt = "item under review"; });
  $("undo").addEventListener("click", () => { undo(); });
  $("extend").addEventListener("click", () => { extend(); });
  // The decision bar: the same actions as the keys, by mouse (or Tab + Enter).
  function act(key) {
    if (key === "?") { help(true); return; }
    if (!current || busy) return;
    switch (key) {
      case "a":
        if (current.image_problem) { status("The scored image is not available: remove or escalate"); break; }
        decide("allow"); break;
      case "r": bankTarget = null; chooseReason(); break;
      case "b": chooseBank(); break;
      case "e":
        if (current.queue === "escalation") { status("Already in the escalation queue: allow or remove it"); break; }
        decide("escalate"); break;
      case "s": skip(); break;
      case "x": extend(); break;
      default: break;
    }
  }
  for (const button of document.querySelectorAll("#decision-bar button[data-key]")) {
    button.addEventListener("click", () => act(button.dataset.key));
  }

  next();
})();
