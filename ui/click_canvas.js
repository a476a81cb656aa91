// segcore click canvas: the scan, a layer over it, click marks and a box; reports exact pixel clicks and boxes.
//
// Coordinate contract (as segcore.annotate): a click at screen point p over image pixel (row, col) reports
// {row, col} with row = floor((p.y - top) / height * h), col likewise, clipped to the image. The element stays
// mounted while the data changes, so a click costs one small message and an image swap, not a new chart.
//
// Mouse: click = prompt (shift-click: the opposite sign), drag = box, right/middle drag = pan,
// ctrl/cmd + wheel (or a trackpad pinch) or the +/- buttons = zoom around the pointer, "Fit" = whole image.
// Marks are built as SVG elements (no HTML strings), so nothing in the data is parsed as markup.

function pixelOf(root, ev) {
  const d = root._data;
  const r = root.querySelector(".sc-base").getBoundingClientRect();
  const col = Math.floor(((ev.clientX - r.left) / r.width) * d.width);
  const row = Math.floor(((ev.clientY - r.top) / r.height) * d.height);
  return {
    row: Math.min(Math.max(row, 0), d.height - 1),
    col: Math.min(Math.max(col, 0), d.width - 1),
    inside: row >= 0 && col >= 0 && row < d.height && col < d.width,
  };
}

function applyView(root) {
  const v = root._view;
  root.querySelector(".sc-stage").style.transform = `translate(${v.x}px, ${v.y}px) scale(${v.k})`;
  root.querySelector(".sc-zoom").textContent = `${Math.round(v.k * 100)} %`;
}

function zoomAt(root, factor, cx, cy) {
  const v = root._view;
  const k = Math.min(Math.max(v.k * factor, 1), 16);
  // keep the image point under (cx, cy) (view coordinates) where it is
  v.x = cx - ((cx - v.x) * k) / v.k;
  v.y = cy - ((cy - v.y) * k) / v.k;
  v.k = k;
  clampView(root);
  applyView(root);
}

function clampView(root) {
  const v = root._view;
  const box = root.querySelector(".sc-view").getBoundingClientRect();
  v.x = Math.min(0, Math.max(v.x, box.width - box.width * v.k));
  v.y = Math.min(0, Math.max(v.y, box.height - box.height * v.k));
}

function build(parentElement) {
  const root = document.createElement("div");
  root.className = "sc-root";
  root.innerHTML = `
    <div class="sc-bar"><span class="sc-title"></span>
      <span class="sc-tools"><button class="sc-in" title="Zoom in">+</button><button class="sc-out"
        title="Zoom out">&minus;</button><button class="sc-fit" title="Whole image">Fit</button>
        <span class="sc-zoom">100 %</span></span></div>
    <div class="sc-view" data-testid="sc-click-canvas"><div class="sc-stage">
      <img class="sc-base" alt="scan" draggable="false"><img class="sc-layer" alt="" draggable="false">
      <svg class="sc-svg" preserveAspectRatio="none"></svg><div class="sc-rubber"></div></div></div>`;
  parentElement.appendChild(root);
  root._view = { k: 1, x: 0, y: 0 };
  const view = root.querySelector(".sc-view");
  const rubber = root.querySelector(".sc-rubber");
  let drag = null;
  const stop = () => { drag = null; rubber.style.display = "none"; };
  view.addEventListener("contextmenu", (ev) => ev.preventDefault());
  view.addEventListener("pointerdown", (ev) => {
    if (!ev.isPrimary || drag) return;
    if (ev.button === 1) ev.preventDefault();  // no autoscroll on a middle-button pan
    view.setPointerCapture(ev.pointerId);
    drag = { button: ev.button, x: ev.clientX, y: ev.clientY, vx: root._view.x, vy: root._view.y,
             start: pixelOf(root, ev), moved: false, shift: ev.shiftKey };
  });
  view.addEventListener("pointercancel", stop);
  view.addEventListener("lostpointercapture", stop);  // after pointerup, or when the capture is taken away
  view.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 5) drag.moved = true;
    if (!drag.moved) return;
    if (drag.button !== 0) {  // pan
      root._view.x = drag.vx + dx;
      root._view.y = drag.vy + dy;
      clampView(root);
      applyView(root);
    } else {  // rubber band for a box, drawn in view coordinates
      const b = view.getBoundingClientRect();
      Object.assign(rubber.style, { display: "block", left: `${Math.min(ev.clientX, drag.x) - b.left}px`,
        top: `${Math.min(ev.clientY, drag.y) - b.top}px`, width: `${Math.abs(dx)}px`, height: `${Math.abs(dy)}px` });
    }
  });
  view.addEventListener("pointerup", (ev) => {
    const d = drag;
    stop();
    if (!d || d.button !== 0) return;
    const last = pixelOf(root, ev);
    if (!d.moved) {
      if (last.inside) {
        root._seq += 1;
        root._set("click", { row: last.row, col: last.col, shift: d.shift || ev.shiftKey, seq: root._seq });
      }
      return;
    }
    const r0 = Math.min(d.start.row, last.row), r1 = Math.max(d.start.row, last.row);
    const c0 = Math.min(d.start.col, last.col), c1 = Math.max(d.start.col, last.col);
    if (r1 > r0 && c1 > c0) {
      root._seq += 1;
      root._set("box", { row0: r0, col0: c0, row1: r1, col1: c1, seq: root._seq });
    }
  });
  view.addEventListener("wheel", (ev) => {
    if (!(ev.ctrlKey || ev.metaKey)) return;  // a plain wheel scrolls the page
    ev.preventDefault();
    const b = view.getBoundingClientRect();
    // proportional to the wheel's delta: a mouse notch (~100) zooms 1.2x, a pinch's small deltas zoom smoothly
    zoomAt(root, Math.exp(-Math.max(-200, Math.min(200, ev.deltaY)) * 0.0018), ev.clientX - b.left,
           ev.clientY - b.top);
  }, { passive: false });
  const centre = () => { const b = view.getBoundingClientRect(); return [b.width / 2, b.height / 2]; };
  root.querySelector(".sc-in").onclick = () => zoomAt(root, 1.5, ...centre());
  root.querySelector(".sc-out").onclick = () => zoomAt(root, 1 / 1.5, ...centre());
  root.querySelector(".sc-fit").onclick = () => { root._view = { k: 1, x: 0, y: 0 }; applyView(root); };
  root._seq = 0;
  return root;
}

const SVG = "http://www.w3.org/2000/svg";

function drawMarks(svg, d) {
  const rad = Math.max(2, Math.max(d.width, d.height) / 110);
  const shape = (tag, attrs) => {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries({ "vector-effect": "non-scaling-stroke", "stroke-width": 2, ...attrs })) {
      el.setAttribute(k, String(v));
    }
    return el;
  };
  const parts = d.marks.map(([r, c, colour]) =>
    shape("circle", { cx: c + 0.5, cy: r + 0.5, r: rad, fill: colour, stroke: "white", class: "sc-mark" }));
  if (d.box) {
    const [r0, c0, r1, c1] = d.box;
    parts.push(shape("rect", { x: c0, y: r0, width: c1 - c0 + 1, height: r1 - r0 + 1, fill: "none",
                               stroke: "#f1c40f", class: "sc-box" }));
  }
  svg.replaceChildren(...parts);
}

export default function (component) {
  const { data, setTriggerValue, parentElement } = component;
  let root = parentElement.querySelector(".sc-root");
  if (!root) root = build(parentElement);
  const previous = root._data;
  root._data = data;
  root._set = setTriggerValue;
  if (!previous || previous.width !== data.width || previous.height !== data.height) {
    root.querySelector(".sc-view").style.aspectRatio = `${data.width} / ${data.height}`;
    root.querySelector(".sc-svg").setAttribute("viewBox", `0 0 ${data.width} ${data.height}`);
  }
  root.style.maxWidth = `${data.max_width}px`;
  root.querySelector(".sc-title").textContent = data.title;
  const base = root.querySelector(".sc-base"), layer = root.querySelector(".sc-layer");
  if (base.getAttribute("src") !== data.base) base.setAttribute("src", data.base);
  if (data.layer && layer.getAttribute("src") !== data.layer) layer.setAttribute("src", data.layer);
  layer.style.display = data.layer ? "" : "none";
  drawMarks(root.querySelector(".sc-svg"), data);
  root.dataset.marks = JSON.stringify(data.marks);
  root.dataset.box = JSON.stringify(data.box);
  root.dataset.layerSeq = String(data.seq);
}
