// A video item's sampled frames (the stills kept when it was scored) and its timeline with the
// flagged segments; t jumps to the top frame, [ and ] step through the frames. The frame shown
// large is the review page's image, so blur, unblur and greyscale work as for a photo; the
// filmstrip is blurred and greyscale by default, and follows the large image. Frames never step
// on their own unless the reviewer turned autoplay on in the wellbeing settings (wellbeing.js
// sets data-autoplay on the root element); a key or a click stops it.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const image = $("image");
  const strip = $("filmstrip");
  let video = null;     // the current item's video payload
  let index = 0;        // the frame shown large
  let autoGrey = false; // the page made the large image greyscale for this video
  let playing = null;   // the autoplay timer (only when the reviewer asked for it)

  // data-autoplay on the filmstrip says whether its frames are stepping on their own.
  function stop() {
    if (playing) { clearInterval(playing); playing = null; }
    strip.dataset.autoplay = "off";
  }
  function play() {
    stop();
    if (document.documentElement.dataset.autoplay !== "on" || !video || video.frames.length < 2) return;
    playing = setInterval(() => show((index + 1) % video.frames.length), 1000);
    strip.dataset.autoplay = "on";
  }

  function flagged(t) {
    return video.segments.some((s) => t >= s.start_s - 1e-6 && t < s.end_s - 1e-6);
  }

  function mirror() {
    strip.classList.toggle("blur", image.classList.contains("blur"));
    strip.classList.toggle("grey", image.classList.contains("grey"));
  }
  new MutationObserver(mirror).observe(image, { attributes: true, attributeFilter: ["class"] });

  function pct(t) { return Math.max(0, Math.min(100, (100 * t) / (video.duration_s || 1))) + "%"; }

  function show(i) {
    if (!video || !video.frames.length) return;
    index = Math.max(0, Math.min(video.frames.length - 1, i));
    const frame = video.frames[index];
    image.src = frame.url;
    $("frames").querySelectorAll("li").forEach((li, k) => {
      li.classList.toggle("current", k === index);
      if (k === index) li.scrollIntoView({ block: "nearest", inline: "nearest" });
    });
    const cursor = $("timeline").querySelector(".cursor");
    if (cursor) cursor.style.left = pct(frame.t);
    const top = index === video.top_index ? " (top frame)" : "";
    $("film-caption").textContent = "frame " + (index + 1) + " of " + video.frames.length
      + " at " + frame.t.toFixed(1) + " s" + top + " · " + video.duration_s.toFixed(1) + " s video";
  }

  function render(item) {
    stop();
    video = item.video || null;
    if (!video) {
      strip.hidden = true;
      if (autoGrey) { image.classList.remove("grey"); autoGrey = false; }
      return;
    }
    if (!image.classList.contains("grey")) { image.classList.add("grey"); autoGrey = true; }
    strip.hidden = false;
    mirror();
    const timeline = $("timeline");
    timeline.replaceChildren();
    for (const s of video.segments) {
      const bar = document.createElement("div");
      bar.className = "segment " + s.decision;
      bar.style.left = pct(s.start_s);
      bar.style.width = "calc(" + pct(s.end_s) + " - " + pct(s.start_s) + ")";
      bar.title = s.category + ": " + s.decision + " " + s.start_s.toFixed(1) + "–" + s.end_s.toFixed(1) + " s";
      bar.dataset.start = String(s.start_s);
      bar.dataset.end = String(s.end_s);
      timeline.appendChild(bar);
    }
    for (const f of video.frames) {
      const tick = document.createElement("div");
      tick.className = "tick";
      tick.style.left = pct(f.t);
      timeline.appendChild(tick);
    }
    const cursor = document.createElement("div");
    cursor.className = "cursor";
    timeline.appendChild(cursor);
    const list = $("frames");
    list.replaceChildren();
    video.frames.forEach((f, k) => {
      const li = document.createElement("li");
      if (flagged(f.t)) li.classList.add("flagged");
      if (k === video.top_index) li.classList.add("top");
      const thumb = document.createElement("img");
      thumb.src = f.url;
      thumb.alt = "sampled frame at " + f.t.toFixed(1) + " s";
      thumb.draggable = false;
      li.appendChild(thumb);
      li.appendChild(document.createTextNode(f.t.toFixed(1) + " s"));
      li.addEventListener("click", () => { stop(); show(k); });
      list.appendChild(li);
    });
    const problem = $("film-problem");
    problem.hidden = !video.problem;
    problem.textContent = video.problem || "";
    $("film-keys").hidden = video.frames.length === 0;
    if (video.frames.length) show(video.top_index === null ? 0 : video.top_index);
    play();
  }

  document.addEventListener("review:item", (event) => render(event.detail));
  document.addEventListener("wellbeing:settings", () => { if (video && !playing) play(); });
  document.addEventListener("keydown", (event) => {
    if (!video || !video.frames.length || event.ctrlKey || event.metaKey || event.altKey) return;
    // Choosing a reason (keys type into its filter) or reading the help: not ours.
    if ($("item").hidden || !$("reason-panel").hidden || !$("help").hidden) return;
    stop();
    if (event.key === "t") show(video.top_index === null ? 0 : video.top_index);
    else if (event.key === "[") show(index - 1);
    else if (event.key === "]") show(index + 1);
    else return;
    event.preventDefault();
  });
})();
