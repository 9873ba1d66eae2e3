// Wellbeing on the review page: the reviewer's settings (kept on the server, applied on every
// load: greyscale, blur strength, video autoplay), the settings panel (w), and break prompts
// after so many critical items or so long on shift (the server counts; the page asks after
// every item). While a wellbeing dialog is open, keys go to it and never decide an item.
"use strict";
(function () {
  const holder = document.getElementById("wellbeing");
  if (!holder) return;
  const base = document.body.dataset.base;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);
  const image = $("image");
  const panel = $("wellbeing-panel");
  const prompt = $("break-prompt");
  let settings = JSON.parse(holder.dataset.settings);
  let returnFocus = null;

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

  // The settings, applied: blur strength as a CSS variable, greyscale on the image (the
  // reviewer may still toggle it with g for one item), autoplay for filmstrip.js.
  function apply() {
    document.documentElement.style.setProperty("--review-blur", settings.blur_px + "px");
    image.classList.toggle("grey", Boolean(settings.greyscale));
    document.documentElement.dataset.autoplay = settings.autoplay_video ? "on" : "off";
    document.dispatchEvent(new CustomEvent("wellbeing:settings", { detail: settings }));
  }

  function showToday(today) {
    $("wellbeing-today").textContent = "Today: " + today.shown + " items, " + today.critical
      + " critical, " + today.revealed + " unblurred";
  }

  function openDialog(box, focus) {
    returnFocus = document.activeElement;
    box.hidden = false;
    focus.focus();
  }
  function closeDialog(box) {
    box.hidden = true;
    if (returnFocus && returnFocus.focus) returnFocus.focus();
    returnFocus = null;
  }

  function openPanel() {
    $("wb-greyscale").checked = Boolean(settings.greyscale);
    $("wb-blur").value = settings.blur_px;
    $("wb-autoplay").checked = Boolean(settings.autoplay_video);
    $("wb-critical").value = settings.break_after_critical;
    $("wb-minutes").value = settings.break_after_minutes;
    $("wellbeing-error").hidden = true;
    openDialog(panel, $("wb-greyscale"));
  }

  $("wellbeing-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const data = await call("PUT", "/api/wellbeing/settings", {
        greyscale: $("wb-greyscale").checked,
        blur_px: Number($("wb-blur").value),
        autoplay_video: $("wb-autoplay").checked,
        break_after_critical: Number($("wb-critical").value),
        break_after_minutes: Number($("wb-minutes").value),
      });
      settings = data.settings;
      apply();
      closeDialog(panel);
      $("status").textContent = "Wellbeing settings saved";
    } catch (err) {
      $("wellbeing-error").textContent = "Not saved: " + err.message;
      $("wellbeing-error").hidden = false;
    }
  });
  $("wellbeing-open").addEventListener("click", openPanel);
  $("wellbeing-cancel").addEventListener("click", () => closeDialog(panel));

  // Break prompts: asked after every item the server hands out.
  async function check() {
    try {
      const data = await call("GET", "/api/wellbeing");
      showToday(data.today);
      if (data.break && prompt.hidden) {
        $("break-message").textContent = data.break.message;
        $("break-on").hidden = true;
        $("break-take").hidden = false;
        $("break-dismiss").hidden = false;
        $("break-resume").hidden = true;
        openDialog(prompt, $("break-take"));
      }
    } catch (err) { /* a prompt is a hint: the next item asks again */ }
  }
  async function answer(taken) {
    try {
      const data = await call("POST", "/api/wellbeing/break", { taken: taken });
      showToday(data.today);
    } catch (err) { $("status").textContent = "Break not recorded: " + err.message; }
    if (taken) {
      $("break-on").hidden = false;
      $("break-take").hidden = true;
      $("break-dismiss").hidden = true;
      $("break-resume").hidden = false;
      $("break-resume").focus();
    } else {
      closeDialog(prompt);
    }
  }
  $("break-take").addEventListener("click", () => answer(true));
  $("break-dismiss").addEventListener("click", () => answer(false));
  $("break-resume").addEventListener("click", () => closeDialog(prompt));

  document.addEventListener("review:item", () => { apply(); check(); });

  // Keys: w opens the panel; while a dialog is open, Esc closes it and no key reaches the
  // review page's handlers (typing into the fields still works).
  window.addEventListener("keydown", (event) => {
    const open = !panel.hidden ? panel : !prompt.hidden ? prompt : null;
    if (open) {
      if (event.key === "Escape") {
        event.preventDefault();
        if (open === panel) closeDialog(panel);
        else if (!$("break-resume").hidden) closeDialog(prompt);
        else answer(false);
      }
      event.stopImmediatePropagation();
      return;
    }
    if (event.key !== "w" || event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const t = event.target;
    if (t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement) return;
    const help = $("help");
    const reasons = $("reason-panel");
    if ((help && !help.hidden) || (reasons && !reasons.hidden)) return;
    event.preventDefault();
    event.stopImmediatePropagation();
    openPanel();
  }, true);

  apply();
  check();
  // A time on shift passes without new items too: ask again every minute.
  setInterval(() => { if (prompt.hidden) check(); }, 60000);
})();
