// Text found in the image (signal "text", OCR): the boxes of the lines a text rule matched are
// drawn over the image under review, each labelled with its rule, and the evidence list shows
// what was read. Boxes are fractions of the frame's width and height, so they fit the image at
// any size; on a video they belong to the frame that decided (the top frame) and are hidden on
// the others.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const image = document.getElementById("image");
  const frame = document.getElementById("frame");
  if (!image || !frame) return;
  const layer = document.createElementNS(SVG, "svg");
  layer.id = "ocr-boxes";
  layer.setAttribute("class", "ocr-boxes");
  layer.setAttribute("viewBox", "0 0 1 1");
  layer.setAttribute("preserveAspectRatio", "none");
  layer.setAttribute("aria-hidden", "true");
  frame.appendChild(layer);
  let matches = [];    // [{boxes, rule, text}] of the current item
  let homeUrl = null;  // the image the boxes belong to

  function textMatches(item) {
    return (item.evidence || []).filter(
      (e) => e.signal === "text" && e.details && Array.isArray(e.details.boxes) && e.details.boxes.length
    ).map((e) => ({ boxes: e.details.boxes, rule: e.details.rule, text: e.label }));
  }

  function place() {
    const shown = matches.length && !image.hidden && image.src && image.src === homeUrl;
    layer.style.display = shown ? "" : "none";
    if (!shown) return;
    layer.style.left = image.offsetLeft + "px";
    layer.style.top = image.offsetTop + "px";
    layer.style.width = image.offsetWidth + "px";
    layer.style.height = image.offsetHeight + "px";
  }

  function draw() {
    layer.replaceChildren();
    for (const m of matches) {
      for (const box of m.boxes) {
        const poly = document.createElementNS(SVG, "polygon");
        poly.setAttribute("points", box.map((p) => p[0] + "," + p[1]).join(" "));
        poly.setAttribute("class", "ocr-box " + (m.rule === "error" ? "ocr-error" : "ocr-match"));
        poly.setAttribute("vector-effect", "non-scaling-stroke");
        const title = document.createElementNS(SVG, "title");
        title.textContent = m.rule + ": " + m.text;
        poly.appendChild(title);
        layer.appendChild(poly);
      }
    }
  }

  // The evidence line of a text match (review.js asks for it): rule, what was read, confidence.
  window.textEvidence = function (e) {
    const d = e.details || {};
    if (d.error) return "pattern timed out: " + d.wanted + " (sent to review)";
    if (!d.rule) return e.label + (d.text ? " — read: " + d.text : "");
    const where = d.boxes && d.boxes.length ? " · " + d.boxes.length + " box(es) outlined" : "";
    return d.rule + " " + JSON.stringify(d.wanted) + " read as " + JSON.stringify(d.text)
      + " — " + e.score.toFixed(2) + where;
  };

  document.addEventListener("review:item", (event) => {
    const item = event.detail;
    matches = textMatches(item);
    homeUrl = item.image_url ? new URL(item.image_url, window.location.href).href : null;
    draw();
    place();
  });
  image.addEventListener("load", place);
  window.addEventListener("resize", place);
  new MutationObserver(place).observe(image, { attributes: true, attributeFilter: ["src", "hidden"] });
})();
