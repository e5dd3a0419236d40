// medadapt annotate: page state and drawing (image with window/level, mask overlays, prompt marks).
"use strict";

const $ = (id) => document.getElementById(id);
const PALETTE = [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
  [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [170, 110, 40]];
const S = {
  items: [], classes: [], item: null, slice: 0, info: null, pixels: null, w: 0, h: 0, c: 1, scale: 1,
  level: 0, width: 1, labels: [], object: null, objectMask: null, pending: [], chain: Promise.resolve(),
  drag: null, openSeq: 0, guide: null, guidePoint: null, want: null, accepting: null, windowSet: false,
};

function decodeRle(rle) {
  const [h, w] = rle.size;
  const out = new Uint8Array(h * w);
  let pos = 0;
  rle.counts.forEach((n, i) => {
    if (i % 2 === 1) out.fill(1, pos, pos + n);
    pos += n;
  });
  return out;
}

function colour(value) { return PALETTE[(Math.max(1, value) - 1) % PALETTE.length]; }

function currentClass() { return $("class-select").value || null; }

function classValue(name) {
  const c = S.classes.find((x) => x.name === name);
  return c ? c.value : 1;
}

// ------------------------------------------------------------------ drawing
function layout() {
  const stage = $("stage");
  if (!S.w) return;
  S.scale = Math.max(0.05, Math.min(stage.clientWidth / S.w, stage.clientHeight / S.h));
  const dw = Math.round(S.w * S.scale), dh = Math.round(S.h * S.scale);
  for (const id of ["image", "mask", "marks"]) {
    const c = $(id);
    c.style.width = `${dw}px`;
    c.style.height = `${dh}px`;
  }
  $("marks").width = dw;
  $("marks").height = dh;
  drawMarks();
}

function drawImage() {
  const cv = $("image");
  const ctx = cv.getContext("2d");
  const img = ctx.createImageData(S.w, S.h);
  const lo = S.level - S.width / 2, k = 255 / Math.max(S.width, 1e-6);
  const px = S.pixels, c = S.c, d = img.data;
  for (let i = 0, n = S.w * S.h; i < n; i++) {
    for (let ch = 0; ch < 3; ch++) {
      const v = px[i * c + (c === 3 ? ch : 0)];
      d[i * 4 + ch] = Math.max(0, Math.min(255, (v - lo) * k));
    }
    d[i * 4 + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function drawMask() {
  const cv = $("mask");
  const ctx = cv.getContext("2d");
  const img = ctx.createImageData(S.w, S.h);
  const d = img.data, alpha = Number($("opacity").value) / 100;
  let labelled = 0;
  for (const { value, mask } of S.labels) {
    const [r, g, b] = colour(value);
    for (let i = 0; i < mask.length; i++) {
      if (!mask[i]) continue;
      labelled++;
      d[i * 4] = r; d[i * 4 + 1] = g; d[i * 4 + 2] = b; d[i * 4 + 3] = 255 * alpha * 0.7;
    }
  }
  let count = 0;
  const m = S.objectMask;
  if (m) {
    const [r, g, b] = colour(classValue(S.object && S.object.class_name));
    const w = S.w, h = S.h;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = y * w + x;
        if (!m[i]) continue;
        count++;
        const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 || !m[i - 1] || !m[i + 1] || !m[i - w] || !m[i + w];
        d[i * 4] = edge ? 255 : r; d[i * 4 + 1] = edge ? 255 : g; d[i * 4 + 2] = edge ? 255 : b;
        d[i * 4 + 3] = edge ? 255 : 255 * Math.min(1, alpha * 1.4);
      }
    }
  }
  let unsure = 0;
  if (S.guide && $("guide").checked) {  // where the model is least sure: a light veil, under the marks
    for (let i = 0; i < S.guide.length; i++) {
      if (!S.guide[i]) continue;
      unsure++;
      d[i * 4] = Math.round((d[i * 4] + 255) / 2); d[i * 4 + 1] = Math.round((d[i * 4 + 1] + 255) / 2);
      d[i * 4 + 2] = Math.round((d[i * 4 + 2] + 255) / 2); d[i * 4 + 3] = Math.max(d[i * 4 + 3], 90);
    }
  }
  ctx.putImageData(img, 0, 0);
  cv.dataset.guidePixels = String(unsure);
  cv.dataset.maskPixels = String(count);
  cv.dataset.labelPixels = String(labelled);
}

function toScreen(x, y) { return [(x + 0.5) * S.scale, (y + 0.5) * S.scale]; }

function drawMarks() {
  const cv = $("marks");
  const ctx = cv.getContext("2d");
  ctx.clearRect(0, 0, cv.width, cv.height);
  const prompts = [...((S.object && S.object.prompts) || []), ...S.pending];
  if (S.drag && S.drag.kind !== "point") prompts.push(S.drag);
  ctx.lineWidth = 2;
  if (S.guidePoint && $("guide").checked) {  // the suggested place to look (and click, if it is wrong there)
    const [x, y] = toScreen(S.guidePoint[0], S.guidePoint[1]);
    ctx.strokeStyle = "#ffffff";
    ctx.setLineDash([4, 3]);
    ctx.beginPath();
    ctx.arc(x, y, 10, 0, 2 * Math.PI);
    ctx.stroke();
    ctx.setLineDash([]);
  }
  for (const p of prompts) {
    const col = p.label === 0 ? "#ff5252" : "#69f0ae";
    if (p.kind === "point") {
      const [x, y] = toScreen(p.x, p.y);
      ctx.fillStyle = col;
      ctx.strokeStyle = "#000";
      ctx.beginPath();
      ctx.arc(x, y, 5, 0, 2 * Math.PI);
      ctx.fill();
      ctx.stroke();
    } else if (p.kind === "box") {
      const [x0, y0] = toScreen(Math.min(p.x0, p.x1), Math.min(p.y0, p.y1));
      const [x1, y1] = toScreen(Math.max(p.x0, p.x1), Math.max(p.y0, p.y1));
      ctx.strokeStyle = "#40c4ff";
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    } else if (p.kind === "scribble" && p.points.length) {
      ctx.strokeStyle = col;
      ctx.beginPath();
      p.points.forEach(([px, py], i) => {
        const [x, y] = toScreen(px, py);
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
    }
  }
}

function showObject(obj) {
  S.object = obj;
  S.objectMask = obj && obj.mask ? decodeRle(obj.mask) : null;
  S.guide = obj && obj.guidance ? decodeRle(obj.guidance.region) : null;
  S.guidePoint = obj && obj.guidance ? obj.guidance.point : null;
  drawMask();
  drawMarks();
  $("marks").dataset.prompts = String(obj && obj.prompts ? obj.prompts.length : 0);
}

