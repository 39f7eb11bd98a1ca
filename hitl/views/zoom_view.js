// Synchronised zoom and pan of a link's two images (see zoom_view.py).
//
// One state: A's view {cx, cy, zoom} (centre in A's original pixels, screen px per
// original px). B's view is A's mapped by the link's affine (mappedView, as
// zoom_view.mapped_view). Every frame draws each image's overview, then its sharp crop
// (data.a.detail, data.b.detail) where it covers, then the link's box and points. When
// a gesture settles, the view goes to the app (setStateValue), which answers with the
// crops of the new visible areas. Frame times are kept for the browser test.

function mappedView(view, affine, scale) {
  const [[a, b, c], [d, e, f]] = affine;
  return { cx: a * view.cx + b * view.cy + c, cy: d * view.cx + e * view.cy + f, zoom: view.zoom / scale };
}

function affineScale(affine) {
  const [[a, b], [d, e]] = affine;
  return Math.sqrt(Math.abs(a * e - b * d));
}

function loadPicture(cache, src) {
  if (!src) return null;
  if (!cache[src]) {
    const img = new Image();
    img.src = src;
    cache[src] = img;
  }
  return cache[src];
}

function drawSide(canvas, side, view, state, colour) {
  const ctx = canvas.getContext("2d");
  const [w, h] = [canvas.width, canvas.height];
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#2b2b2b";
  ctx.fillRect(0, 0, w, h);
  ctx.setTransform(view.zoom, 0, 0, view.zoom, w / 2 - view.cx * view.zoom, h / 2 - view.cy * view.zoom);
  for (const part of [side.overview, side.detail]) {
    const img = part && loadPicture(state.pictures, part.src);
    if (img && img.complete && img.naturalWidth > 0) {
      const [x0, y0, x1, y1] = part.box;
      ctx.drawImage(img, x0, y0, x1 - x0, y1 - y0);
    }
  }
  const [bx0, by0, bx1, by1] = side.box;
  ctx.lineWidth = 2 / view.zoom;
  ctx.strokeStyle = colour;
  ctx.strokeRect(bx0, by0, bx1 - bx0, by1 - by0);
  if (state.showPoints) {
    const r = 3 / view.zoom;
    ctx.fillStyle = "#ffd400";
    const offset = side === state.data.a ? 0 : 2;
    for (const p of state.data.points) {
      ctx.beginPath();
      ctx.arc(p[offset], p[offset + 1], r, 0, 2 * Math.PI);
      ctx.fill();
    }
  }
  const half = [w / 2 / view.zoom, h / 2 / view.zoom];
  canvas.dataset.view = [view.cx, view.cy, view.zoom].map((v) => v.toFixed(4)).join(",");
  canvas.dataset.visible = [view.cx - half[0], view.cy - half[1], view.cx + half[0], view.cy + half[1]]
    .map((v) => v.toFixed(2)).join(",");
}

function draw(state) {
  state.pending = false;
  const start = performance.now();
  const viewB = mappedView(state.view, state.data.affine, state.scale);
  drawSide(state.canvasA, state.data.a, state.view, state, "#e63946");
  drawSide(state.canvasB, state.data.b, viewB, state, "#1d78e6");
  state.frames.push(performance.now() - start);
  if (state.frames.length > 2000) state.frames.shift();
}

function schedule(state) {
  if (!state.pending) {
    state.pending = true;
    requestAnimationFrame(() => draw(state));
  }
}

function settle(state) {
  clearTimeout(state.timer);
  state.timer = setTimeout(() => {
    const v = state.view;
    state.sent += 1;
    state.setStateValue("view", { link: state.data.link, cx: v.cx, cy: v.cy, zoom: v.zoom,
                                  ratio: window.devicePixelRatio || 1,
                                  width: state.canvasA.width, height: state.canvasA.height });
  }, 250);
}

// A view of side "a" or "b" -> A's view (B's goes back through the inverse affine).
function toA(state, which, view) {
  if (which === "a") return view;
  const back = mappedView(view, state.data.inverse, 1 / state.scale);
  return back;
}

function viewOf(state, which) {
  return which === "a" ? state.view : mappedView(state.view, state.data.affine, state.scale);
}

function clampZoom(state, zoom, which) {
  const limit = state.data.max_zoom * (which === "a" ? 1 : 1 / state.scale);
  const floor = 0.01 * (which === "a" ? 1 : 1 / state.scale);
  return Math.min(limit, Math.max(floor, zoom));
}

function attach(state, canvas, which) {
  canvas.onwheel = (event) => {
    event.preventDefault();
    const view = viewOf(state, which);
    const rect = canvas.getBoundingClientRect();
    const sx = event.clientX - rect.left - rect.width / 2;
    const sy = event.clientY - rect.top - rect.height / 2;
    const zoom = clampZoom(state, view.zoom * Math.exp(-event.deltaY * 0.0015), which);
    // the point under the cursor stays under the cursor
    const px = view.cx + sx / view.zoom;
    const py = view.cy + sy / view.zoom;
    state.inputAt = performance.now();
    state.view = toA(state, which, { cx: px - sx / zoom, cy: py - sy / zoom, zoom });
    schedule(state);
    settle(state);
  };
  canvas.onpointerdown = (event) => {
    canvas.setPointerCapture(event.pointerId);
    state.drag = { which, x: event.clientX, y: event.clientY, view: viewOf(state, which) };
  };
  canvas.onpointermove = (event) => {
    const drag = state.drag;
    if (!drag || drag.which !== which) return;
    const z = drag.view.zoom;
    const moved = { cx: drag.view.cx - (event.clientX - drag.x) / z, cy: drag.view.cy - (event.clientY - drag.y) / z, zoom: z };
    state.view = toA(state, which, moved);
    schedule(state);
  };
  canvas.onpointerup = () => {
    if (state.drag) settle(state);
    state.drag = null;
  };
}

export default function (component) {
  const { data, parentElement, setStateValue } = component;
  if (!data || !data.a) return undefined;
  let root = parentElement.querySelector(".am-zoom");
  if (!root) {
    root = document.createElement("div");
    root.className = "am-zoom";
    root.style.display = "flex";
    root.style.gap = "8px";
    for (const which of ["a", "b"]) {
      const canvas = document.createElement("canvas");
      canvas.dataset.side = which;
      canvas.className = "am-zoom-" + which;
      canvas.style.touchAction = "none";
      canvas.style.cursor = "grab";
      root.appendChild(canvas);
    }
    parentElement.appendChild(root);
  }
  const state = root.__zoom || (root.__zoom = { frames: [], pictures: {}, sent: 0 });
  window.__artminerZoom = state;
  const current = new Set([data.a, data.b].flatMap((s) => [s.overview, s.detail]).filter(Boolean).map((p) => p.src));
  for (const src of Object.keys(state.pictures)) {
    if (!current.has(src)) delete state.pictures[src]; // crops of earlier views: not needed again
  }
  state.data = data;
  state.showPoints = data.points.length > 0;
  state.scale = affineScale(data.affine);
  state.setStateValue = setStateValue;
  state.canvasA = root.querySelector("canvas.am-zoom-a");
  state.canvasB = root.querySelector("canvas.am-zoom-b");
  // Two canvases side by side fill the column (the app's guess, data.canvas, is the most).
  const width = Math.max(120, Math.min(data.canvas[0], Math.floor(((parentElement.clientWidth || 2 * data.canvas[0]) - 8) / 2)));
  const height = Math.round(width * data.canvas[1] / data.canvas[0]);
  for (const canvas of [state.canvasA, state.canvasB]) {
    canvas.width = width;
    canvas.height = height;
    canvas.style.width = width + "px"; // one canvas pixel per CSS pixel: the page's CSS may not stretch it
    canvas.style.height = height + "px";
  }
  if (state.link !== data.link) { // a new link: start from the app's view, rescaled to this canvas
    state.link = data.link;
    const shrink = width / data.canvas[0];
    state.view = { cx: data.a.view[0], cy: data.a.view[1], zoom: data.a.view[2] * shrink };
    if (shrink !== 1) settle(state); // the first crops were cut for the larger canvas
  }
  attach(state, state.canvasA, "a");
  attach(state, state.canvasB, "b");
  // redraw as each picture arrives (overviews first, then the sharp crops)
  for (const side of [data.a, data.b]) {
    for (const part of [side.overview, side.detail]) {
      const img = part && loadPicture(state.pictures, part.src);
      if (img && !img.complete) img.addEventListener("load", () => schedule(state), { once: true });
    }
  }
  root.dataset.detailA = data.a.detail ? data.a.detail.box.join(",") + "@" + data.a.detail.level : "";
  root.dataset.detailB = data.b.detail ? data.b.detail.box.join(",") + "@" + data.b.detail.level : "";
  schedule(state);
  return () => clearTimeout(state.timer);
}
