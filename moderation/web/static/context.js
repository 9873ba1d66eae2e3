// The context panel: what was decided before on the same image (same tenant only), the
// uploader's recent history, and, in the escalation queue, both decisions of a disagreement.
// Renders what the claimed item carries (review.js sends it in a "review:item" event); it
// decides nothing and sends nothing.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);

  function day(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d.getTime()) ? iso : d.toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  function li(text, cls) {
    const el = document.createElement("li");
    el.textContent = text;
    if (cls) el.className = cls;
    return el;
  }

  function sameImage(info) {
    const list = $("same-image");
    const none = $("same-image-none");
    const rows = (info && info.earlier) || [];
    list.replaceChildren(...rows.map((e) => {
      const parts = [day(e.created_at), "job " + e.job_id];
      if (e.verdict) {
        parts.push("model: " + e.verdict + (e.category ? " " + e.category : "")
          + (typeof e.score === "number" ? " " + e.score.toFixed(2) : ""));
      }
      if (e.human) {
        parts.push("reviewer: " + e.human + (e.human_reason_code ? " (" + e.human_reason_code + ")" : "")
          + (e.human_at ? " on " + day(e.human_at) : ""));
      } else {
        parts.push("no reviewer decision");
      }
      if (e.matched_by === "pdq") parts.push("same PDQ hash, other bytes");
      const cls = e.human === "remove" ? "removed" : e.human === "allow" ? "allowed" : e.verdict || "";
      return li(parts.join(" · "), cls);
    }));
    none.hidden = rows.length > 0;
    none.textContent = !info ? "Not kept here (no job records to search)"
      : info.unavailable ? "Cannot be looked up right now"
      : "Not seen before";
  }

  function uploader(info) {
    const list = $("uploader-prior");
    const rows = (info && info.prior) || [];
    $("uploader-id").textContent = info ? info.uploader_id : "";
    $("uploader-summary").textContent = !info ? "Not known (the upload named no uploader)"
      : info.strike_points + " strike point" + (info.strike_points === 1 ? "" : "s") + " in force · "
        + "action: " + info.action + " · " + rows.length + " earlier decision" + (rows.length === 1 ? "" : "s");
    list.replaceChildren(...rows.map((p) => li(
      [day(p.at), "job " + p.job_id, p.decision + " (" + p.source + ")", p.category,
        p.severity || "", p.overturned ? "overturned on appeal" : ""].filter(Boolean).join(" · "),
      p.overturned ? "" : p.decision === "remove" ? "removed" : p.decision)));
  }

  function disagreement(votes) {
    const box = $("disagreement");
    box.hidden = !votes || votes.length === 0;
    $("disagreement-votes").replaceChildren(...(votes || []).map((v, i) => li(
      (i === 0 ? "First reviewer" : "Second reviewer") + ": " + v.decision
        + (v.reason_label ? " — " + v.reason_label : "") + " · " + day(v.at),
      v.decision === "remove" ? "removed" : "allowed")));
  }

  document.addEventListener("review:item", (event) => {
    const item = event.detail;
    if (!item || !$("context")) return;
    sameImage(item.same_image);
    uploader(item.uploader);
    disagreement(item.disagreement);
  });
})();
