// medadapt annotate: the page. Talks only to this server's /api routes (see medadapt/app/server.py).
"use strict";

// ------------------------------------------------------------------ helpers
async function api(method, url, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(url, init);
  const data = await r.json().catch(() => ({ detail: `HTTP ${r.status}` }));
  if (!r.ok) throw new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail));
  return data;
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function busy(on) { document.body.dataset.busy = on ? "true" : "false"; }

function itemById(id) { return S.items.find((it) => it.id === id); }

function sliceUrl(item, k, what) { return `/api/items/${encodeURIComponent(item)}/slices/${k}/${what}`; }

// ------------------------------------------------------------------ state and lists
function renderItems() {
  const ul = $("items");
  ul.textContent = "";
  for (const it of S.items) {
    const li = document.createElement("li");
    li.dataset.id = it.id;
    li.dataset.accepted = String(it.accepted.length > 0);
    li.textContent = it.name;
    li.title = it.name;
    if (it.kind === "volume" && it.accepted.length) {
      const span = document.createElement("span");
      span.className = "count";
      span.textContent = ` (${it.accepted.length} of ${it.slices} slices)`;
      li.appendChild(span);
    }
    li.classList.toggle("current", it.id === S.item);
    li.addEventListener("click", () => openItem(it.id));
    ul.appendChild(li);
  }
}

function renderClasses(select) {
  const sel = $("class-select");
  const keep = select || sel.value;
  sel.textContent = "";
  for (const c of S.classes) {
    const o = document.createElement("option");
    o.value = c.name;
    o.textContent = `${c.name} (${c.value})${c.learned ? " \u2605" : ""}`;
    sel.appendChild(o);
  }
  if (S.classes.some((c) => c.name === keep)) sel.value = keep;
}

async function loadState() {
  const st = await api("GET", "/api/state");
  S.items = st.items;
  S.classes = st.classes;
  renderClasses();
  renderItems();
  $("labels-dir").textContent = `Labels: ${st.labels_dir}`;
  return st;
}

// ------------------------------------------------------------------ the model and its learner
function modelLine(m) {
  const version = m.model_version == null ? "" : `, version ${m.model_version}`;
  const L = m.learning;
  if (!L) return { text: `Model: ${m.model}${version}`, error: false };
  const error = L.error || L.save_error;
  const doing = error ? error : !L.running ? "learner stopped" :
    `learner ${L.training ? "training" : "waiting"}: ${L.steps} steps on ${L.samples} accepted sample${L.samples === 1 ? "" : "s"}`;
  return { text: `Model: ${m.model}${version}; ${doing}`, error: !!error };
}

async function refreshModel() {
  try {
    const line = modelLine(await api("GET", "/api/model"));
    $("model").textContent = line.text;
    $("model").classList.toggle("error", line.error);
  } catch (e) { /* the next poll tries again; the status line reports request errors */ }
}

function watchModel() {
  refreshModel();
  setInterval(() => { if (!document.hidden) refreshModel(); }, 3000);
}

function defaultSlice(it) {
  if (it.accepted.length) return it.accepted[it.accepted.length - 1];
  return Math.floor(it.slices / 2);
}

async function openItem(id, k) {
  const it = itemById(id);
  if (!it) return;
  await openSlice(id, k === undefined ? defaultSlice(it) : k);
}

// classChange: the user chose another class for this slice (its object is relabelled, prompts kept);
// otherwise an object the slice already holds keeps its own class and the class list follows it.
async function openSlice(id, k, classChange = false) {
  const seq = ++S.openSeq;
  S.want = { item: id, slice: k };  // where repeated n/p and arrow keys step from before the pixels arrive
  busy(true);
  try {
    const it = itemById(id);
    const r = await fetch(sliceUrl(id, k, "pixels"));
    if (!r.ok) throw new Error((await r.json()).detail);
    const w = Number(r.headers.get("X-Width")), h = Number(r.headers.get("X-Height"));
    const c = Number(r.headers.get("X-Channels"));
    const pixels = new Float32Array(await r.arrayBuffer());
    if (seq !== S.openSeq) return;
    const fresh = S.item !== id || S.w !== w || S.h !== h;
    // the slice shows at once; prompts wait for its encoding (S.info), and nothing of the last slice stays
    Object.assign(S, { item: id, slice: k, pixels, w, h, c, pending: [], info: null, object: null,
      objectMask: null, labels: [], guide: null, guidePoint: null });
    for (const cid of ["image", "mask"]) { $(cid).width = w; $(cid).height = h; }
    $("slice-control").hidden = it.kind !== "volume";
    $("slice").max = String(it.slices - 1);
    $("slice").value = String(k);
    $("slice-label").textContent = `${k} / ${it.slices - 1}`;
    renderItems();
    if (fresh) S.windowSet = false;  // one window for all slices of an item: brightness holds while scrolling
    if (S.windowSet) drawImage();
    layout();
    const info = await api("POST", sliceUrl(id, k, "open"), { class_name: currentClass(), keep: !classChange });
    if (seq !== S.openSeq) return;
    S.info = info;
    if (!S.windowSet) { setWindow(info.window, info.range); S.windowSet = !info.blank; }  // a blank slice sets none
    drawImage();
    if (info.class_name) renderClasses(info.class_name);
    S.labels = info.labels.map((l) => ({ value: l.value, mask: decodeRle(l.mask) }));
    showObject(info);
    status(info.blank ? `slice ${k} is blank: nothing to segment` :
      `${it.name}${it.kind === "volume" ? ` slice ${k}` : ""}: ${info.source === "proposal" ?
        "automatic proposal shown; click to refine or Accept" : "click, drag a box or scribble on the object"}`);
    document.body.dataset.ready = "true";
  } catch (e) {
    status(e.message, true);
  } finally {
    if (seq === S.openSeq) busy(false);
  }
}

function setWindow(win, range) {
  const [lo, hi] = range, span = Math.max(hi - lo, 1e-6);
  for (const id of ["level", "width"]) {
    $(id).min = id === "level" ? String(lo) : String(span / 1000);
    $(id).max = id === "level" ? String(hi) : String(span * 2);
    $(id).step = String(span / 1000);
  }
  S.level = (win[0] + win[1]) / 2;
  S.width = Math.max(win[1] - win[0], span / 1000);
  $("level").value = String(S.level);
  $("width").value = String(S.width);
}

// ------------------------------------------------------------------ prompts
function send(what, body) {
  const id = S.item, k = S.slice;
  S.chain = S.chain.then(async () => {
    const t0 = performance.now();
    try {
      const obj = await api("POST", sliceUrl(id, k, what), body);
      const here = id === S.item && k === S.slice;
      if (what === "accept") {  // saved wherever the user is now: the list and the message follow
        Object.assign(itemById(id), obj.item_state);
        renderItems();
        refreshModel();  // the learner has a new sample
        if (!here) {
          const it = itemById(id);
          status(`${acceptMessage(obj)} (${it.name}${it.kind === "volume" ? ` slice ${k}` : ""})`, !!obj.on_accept_error);
          return;
        }
        S.labels = obj.labels.map((l) => ({ value: l.value, mask: decodeRle(l.mask) }));
      }
      if (!here) return;
      if (what === "prompts") S.pending.shift();
      showObject(obj);
      const ms = performance.now() - t0;
      $("marks").dataset.latencyMs = ms.toFixed(1);
      $("marks").dataset.serverMs = obj.server_ms == null ? "" : obj.server_ms.toFixed(1);
      $("marks").dataset.decodeMs = obj.decode_ms == null ? "" : obj.decode_ms.toFixed(1);
      const decoder = obj.decode_ms == null ? "" : ` (decoder ${obj.decode_ms.toFixed(0)} ms)`;
      const empty = what === "prompts" && !obj.mask ? "; the mask is empty: box-trained models such as " +
        "LiteMedSAM answer boxes, not lone clicks; drag a box around the object, then click to refine" : "";
      status(what === "accept" ? acceptMessage(obj) : `mask in ${ms.toFixed(0)} ms${decoder}${empty}`,
        what === "accept" && !!obj.on_accept_error);
    } catch (e) {
      if (id !== S.item || k !== S.slice) { if (what === "accept") status(e.message, true); return; }
      if (what === "prompts") S.pending.shift();
      drawMarks();
      status(e.message, true);
    } finally {
      if (what === "accept" && S.accepting === `${id}:${k}`) S.accepting = null;
    }
  });
  return S.chain;
}

function acceptMessage(obj) {
  const saved = obj.saved ? `saved ${obj.saved.class_name} (label ${obj.saved.value}) to ${obj.saved.file}` : "";
  return `${saved}${obj.on_accept_error ? `; on_accept failed: ${obj.on_accept_error}` : ""}`;
}

function accept() {
  const key = `${S.item}:${S.slice}`;
  if (S.accepting === key || !S.info) return;  // one accept a slice at a time (a second would find it gone)
  S.accepting = key;
  send("accept", { class_name: currentClass() });
}

function addPrompt(p) {
  if (!S.item || !S.info || S.info.blank) return;
  S.pending.push(p);
  drawMarks();
  send("prompts", { class_name: currentClass(), prompt: p });
}

function imageXY(ev) {
  const rect = $("marks").getBoundingClientRect();
  const x = (ev.clientX - rect.left) / S.scale - 0.5, y = (ev.clientY - rect.top) / S.scale - 0.5;
  const r = (v) => Math.round(v * 10) / 10;
  return [r(Math.max(0, Math.min(S.w - 1, x))), r(Math.max(0, Math.min(S.h - 1, y)))];
}

function tool() { return document.querySelector('input[name="tool"]:checked').value; }

function onDown(ev) {
  if (!S.item || ev.button === 1) return;
  ev.preventDefault();
  if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();  // keys are the page's again
  const label = ev.button === 2 || $("negative").checked ? 0 : 1;
  const [x, y] = imageXY(ev);
  const t = tool();
  if (t === "point") addPrompt({ kind: "point", x, y, label });
  else if (t === "box") S.drag = { kind: "box", x0: x, y0: y, x1: x, y1: y, label: 1 };
  else S.drag = { kind: "scribble", points: [[x, y]], label };
}

function onMove(ev) {
  if (!S.drag) return;
  const [x, y] = imageXY(ev);
  if (S.drag.kind === "box") { S.drag.x1 = x; S.drag.y1 = y; } else S.drag.points.push([x, y]);
  drawMarks();
}

function onUp() {
  const d = S.drag;
  S.drag = null;
  if (!d) return;
  if (d.kind === "box") {
    const b = { kind: "box", x0: Math.min(d.x0, d.x1), y0: Math.min(d.y0, d.y1), x1: Math.max(d.x0, d.x1),
      y1: Math.max(d.y0, d.y1) };
    if (b.x1 - b.x0 >= 1 && b.y1 - b.y0 >= 1) addPrompt(b); else drawMarks();
  } else {
    addPrompt({ kind: "scribble", points: d.points, label: d.label });
  }
}

// ------------------------------------------------------------------ wiring
function nextItem(step) {
  const i = S.items.findIndex((it) => it.id === (S.want ? S.want.item : S.item));
  const j = Math.max(0, Math.min(S.items.length - 1, i + step));
  if (j !== i) openItem(S.items[j].id);
}

function wire() {
  const marks = $("marks");
  marks.addEventListener("mousedown", onDown);
  window.addEventListener("mousemove", onMove);
  window.addEventListener("mouseup", onUp);
  marks.addEventListener("contextmenu", (ev) => ev.preventDefault());
  $("undo").addEventListener("click", () => send("undo"));
  $("clear").addEventListener("click", () => { S.pending = []; send("clear"); });
  $("accept").addEventListener("click", accept);
  $("class-select").addEventListener("change", () => S.item && openSlice(S.item, S.slice, true));
  $("add-class").addEventListener("click", async () => {
    const name = $("new-class").value.trim();
    if (!name) return;
    try {
      const c = await api("POST", "/api/classes", { name });
      await loadState();
      renderClasses(c.name);
      $("new-class").value = "";
      if (S.item) openSlice(S.item, S.slice, true);
    } catch (e) { status(e.message, true); }
  });
  $("new-class").addEventListener("keydown", (ev) => { if (ev.key === "Enter") $("add-class").click(); });
  let timer = null;
  $("slice").addEventListener("input", () => {
    const k = Number($("slice").value);
    $("slice-label").textContent = `${k} / ${$("slice").max}`;
    clearTimeout(timer);
    timer = setTimeout(() => openSlice(S.item, k), 120);
  });
  for (const id of ["level", "width"]) {
    $(id).addEventListener("input", () => {
      S.level = Number($("level").value);
      S.width = Number($("width").value);
      S.windowSet = true;
      drawImage();
    });
  }
  $("opacity").addEventListener("input", drawMask);
  $("guide").addEventListener("change", () => { drawMask(); drawMarks(); });
  window.addEventListener("resize", layout);
  new ResizeObserver(layout).observe($("stage"));  // a status line that wraps shrinks the stage too
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;  // the browser's own shortcuts (Ctrl+P, Ctrl+X, ...)
    const t = ev.target;
    if (t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement || t.isContentEditable ||
      (t instanceof HTMLInputElement && !["radio", "checkbox", "button"].includes(t.type))) return;
    const tools = { 1: "point", 2: "box", 3: "scribble" };
    if (tools[ev.key]) document.querySelector(`input[value="${tools[ev.key]}"]`).checked = true;
    else if (ev.key === "x") $("negative").checked = !$("negative").checked;
    else if (ev.key === "g") { $("guide").checked = !$("guide").checked; drawMask(); drawMarks(); }
    else if (ev.key === "z") send("undo");
    else if (ev.key === "Escape") send("clear");
    else if (ev.key === "Enter") accept();
    else if (ev.key === "n") nextItem(1);
    else if (ev.key === "p") nextItem(-1);
    else if ((ev.key === "ArrowUp" || ev.key === "ArrowDown") &&
      itemById(S.want ? S.want.item : S.item)?.kind === "volume") {
      const want = S.want || { item: S.item, slice: S.slice };  // where the last key asked to be
      const last = itemById(want.item).slices - 1;
      const k = Math.max(0, Math.min(last, want.slice + (ev.key === "ArrowUp" ? 1 : -1)));
      if (k !== want.slice) openSlice(want.item, k);
    } else return;
    ev.preventDefault();
  });
}

async function main() {
  wire();
  watchModel();
  try {
    const st = await loadState();
    if (!S.items.length) { status("no images"); return; }
    if (st.position && itemById(st.position.item)) await openItem(st.position.item, st.position.slice);
    else await openItem(S.items[0].id);
  } catch (e) {
    status(e.message, true);
  }
}

main();
