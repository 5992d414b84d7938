// maskx demo page: send an image to POST /v1/segment and draw the answer on a canvas.
// Plain browser JavaScript, no build step and no third-party code, so the page works offline
// from the serving container. The palette matches service/overlay.py (maskx predict).
"use strict";

(function () {
  // Bundled samples in static/samples/ (see the README there for how they were made).
  const SAMPLES = ["synth-1.png", "synth-2.png", "synth-3.png"];

  // Hue ranges in degrees [start, span] per mask_source; keep in sync with overlay.py.
  const HUE_RANGES = { supervised: [85, 85], transferred: [330, 65] };
  const SOURCE_TITLES = { supervised: "A: supervised mask", transferred: "B: transferred mask" };
  const MASK_ALPHA = 0.45;
  const GOLDEN = 0.6180339887498949;

  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const statusEl = $("status");

  const state = {
    file: null, // Blob of the current image
    fileName: "",
    bitmap: null, // decoded image drawn under the overlay
    response: null, // last successful /v1/segment JSON
    requestSeq: 0, // drops answers to requests that a newer one superseded
  };

  // ---- colours -----------------------------------------------------------------------------

  // Same arithmetic as Python's colorsys.hsv_to_rgb.
  function hsvToRgb(h, s, v) {
    const i = Math.floor(h * 6);
    const f = h * 6 - i;
    const p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
    const rgb = [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][i % 6];
    return rgb.map((c) => Math.round(c * 255));
  }

  function familyOf(source) {
    const range = HUE_RANGES[source];
    if (!range) throw new Error(`unknown mask_source ${JSON.stringify(source)}`);
    return range;
  }

  function classColor(label, source) {
    const [start, span] = familyOf(source);
    const frac = (label * GOLDEN) % 1;
    return hsvToRgb(((start + span * frac) % 360) / 360, 0.85, 0.95);
  }

  function familyColor(source) {
    const [start, span] = familyOf(source);
    return hsvToRgb(((start + span / 2) % 360) / 360, 0.85, 0.95);
  }

  const css = (rgb) => `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;

  // ---- COCO RLE ----------------------------------------------------------------------------

  // Port of pycocotools' rleFrString: 5-bit groups offset by 48, a continuation bit (0x20), sign
  // extension from bit 0x10, and each count after the second stored as a delta from the count
  // two before it. Arithmetic instead of bit shifts so large counts do not overflow 32 bits.
  function rleCounts(str) {
    const counts = [];
    let p = 0;
    while (p < str.length) {
      let x = 0, k = 0, more = true;
      while (more) {
        if (p >= str.length) throw new Error(`RLE counts truncated at ${p}`);
        const c = str.charCodeAt(p) - 48;
        x += (c & 0x1f) * 2 ** (5 * k);
        more = (c & 0x20) !== 0;
        p++; k++;
        if (!more && (c & 0x10)) x -= 2 ** (5 * k);
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
    return counts;
  }

  // Decode {size: [h, w], counts} into a row-major Uint8Array(h * w) of 0/1. Runs alternate
  // 0 and 1 starting with 0 and go down the columns (column-major), as in COCO. The mask's
  // bounding rows/columns are kept on the array (x0, x1, y0, y1; inclusive) so that drawing
  // touches only that window, not the whole image, per detection.
  function rleDecode(rle) {
    const [h, w] = rle.size;
    const counts = typeof rle.counts === "string" ? rleCounts(rle.counts) : rle.counts;
    const mask = new Uint8Array(h * w);
    let x0 = w, x1 = -1, y0 = h, y1 = -1;
    let pos = 0;
    for (let i = 0; i < counts.length; i++) {
      const n = counts[i];
      if (i % 2 === 1 && n > 0) {
        let col = Math.floor(pos / h), row = pos - col * h;
        x0 = Math.min(x0, col);
        x1 = Math.max(x1, Math.floor((pos + n - 1) / h));
        if (n >= h) { y0 = 0; y1 = h - 1; }
        for (let j = 0; j < n; j++) {
          mask[row * w + col] = 1;
          if (row < y0) y0 = row;
          if (row > y1) y1 = row;
          if (++row === h) { row = 0; col++; }
        }
      }
      pos += n;
    }
    if (pos !== h * w) throw new Error(`RLE runs sum to ${pos}, expected ${h}*${w}`);
    Object.assign(mask, { x0, x1, y0, y1 });
    return mask;
  }

  // ---- drawing -----------------------------------------------------------------------------

  function draw() {
    if (!state.bitmap) return;
    const { width, height } = state.bitmap;
    canvas.width = width;
    canvas.height = height;
    // The canvas keeps the image's own pixels (so boxes need no rescaling); small images are
    // shown enlarged, large ones shrink to the column width (max-width in style.css).
    canvas.style.width = `${Math.max(width, Math.min(720, 2 * width))}px`;
    ctx.drawImage(state.bitmap, 0, 0);
    const dets = state.response ? state.response.detections : [];
    // Lowest score first so the most confident detection ends on top.
    const order = [...dets].sort((a, b) => a.score - b.score);

    if ($("show-masks").checked && order.some((d) => d.mask)) {
      const img = ctx.getImageData(0, 0, width, height);
      const px = img.data;
      for (const det of order) {
        if (!det.mask) continue;
        const [mh, mw] = det.mask.size;
        if (mh !== height || mw !== width) {
          throw new Error(`mask size ${mh}x${mw} differs from image ${height}x${width}`);
        }
        const mask = rleDecode(det.mask);
        const rgb = classColor(det.label, det.mask_source);
        for (let y = mask.y0; y <= mask.y1; y++) {
          for (let x = mask.x0; x <= mask.x1; x++) {
            const i = y * width + x;
            if (!mask[i]) continue;
            const edge =
              x === 0 || y === 0 || x === width - 1 || y === height - 1 ||
              !mask[i - 1] || !mask[i + 1] || !mask[i - width] || !mask[i + width];
            const o = i * 4;
            for (let c = 0; c < 3; c++) {
              px[o + c] = edge ? rgb[c] : px[o + c] * (1 - MASK_ALPHA) + rgb[c] * MASK_ALPHA;
            }
          }
        }
      }
      ctx.putImageData(img, 0, 0);
    }

    if ($("show-boxes").checked) {
      const fontPx = Math.max(11, Math.min(18, Math.round(Math.min(width, height) / 28)));
      const line = Math.max(1, Math.round(Math.min(width, height) / 200));
      ctx.font = `${fontPx}px system-ui, sans-serif`;
      ctx.textBaseline = "top";
      for (const det of order) {
        const color = css(classColor(det.label, det.mask_source));
        const [x1, y1, x2, y2] = det.box;
        ctx.lineWidth = line;
        ctx.strokeStyle = color;
        // Odd widths on half-pixel centres cover whole pixels instead of blending two columns.
        const off = line % 2 ? 0.5 : 0;
        const [rx1, ry1, rx2, ry2] = [x1, y1, x2, y2].map((v) => Math.round(v) + off);
        ctx.strokeRect(rx1, ry1, rx2 - rx1, ry2 - ry1);
        const text = `${det.name} ${det.score.toFixed(2)}`;
        const tw = ctx.measureText(text).width, th = fontPx;
        const ty = y1 - th - 4 >= 0 ? y1 - th - 4 : y1;
        const tx = Math.min(Math.max(0, x1), Math.max(0, width - tw - 4));
        ctx.fillStyle = color;
        ctx.fillRect(tx, ty, tw + 4, th + 4);
        ctx.fillStyle = "#000";
        ctx.fillText(text, tx + 2, ty + 2);
      }
    }
  }

  function renderLegend(dets) {
    const legend = $("legend");
    legend.replaceChildren();
    const entry = (rgb, text, source) => {
      const span = document.createElement("span");
      span.className = "entry";
      if (source) span.dataset.source = source;
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = css(rgb);
      span.append(sw, document.createTextNode(text));
      legend.append(span);
    };
    for (const [source, title] of Object.entries(SOURCE_TITLES)) {
      entry(familyColor(source), title, source);
    }
    const seen = new Map();
    for (const d of dets) seen.set(`${d.label}|${d.mask_source}`, d);
    [...seen.values()]
      .sort((a, b) => a.label - b.label)
      .forEach((d) => entry(classColor(d.label, d.mask_source), `${d.name} (${d.mask_source})`));
  }

  function cell(row, text, numeric) {
    const td = document.createElement("td");
    td.textContent = text;
    if (numeric) td.className = "num";
    row.append(td);
    return td;
  }

  function renderTables(resp, roundTripMs) {
    const body = $("detections").querySelector("tbody");
    body.replaceChildren();
    resp.detections.forEach((d, i) => {
      const tr = document.createElement("tr");
      tr.className = "detection";
      tr.dataset.source = d.mask_source;
      cell(tr, String(i + 1), true);
      const name = cell(tr, "");
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = css(classColor(d.label, d.mask_source));
      name.append(sw, document.createTextNode(` ${d.name}`));
      cell(tr, d.score.toFixed(3), true);
      cell(tr, d.mask_source);
      cell(tr, d.box.map((v) => Math.round(v)).join(", "));
      body.append(tr);
    });
    const timings = $("timings").querySelector("tbody");
    timings.replaceChildren();
    const rows = Object.entries(resp.timing_ms || {});
    rows.push(["round trip (browser)", roundTripMs]);
    for (const [k, v] of rows) {
      const tr = document.createElement("tr");
      cell(tr, k);
      cell(tr, Number(v).toFixed(1), true);
      timings.append(tr);
    }
  }

  function setStatus(text, kind) {
    statusEl.textContent = text;
    statusEl.dataset.state = kind;
  }

  // ---- requests ----------------------------------------------------------------------------

  // The service answers errors as JSON; accept the shapes FastAPI and the service may use.
  function errorText(status, body) {
    if (body && typeof body === "object") {
      const e = body.error && typeof body.error === "object" ? body.error : body;
      const code = e.code || e.error || "";
      let msg = e.message || e.detail || "";
      if (Array.isArray(msg)) msg = msg.map((m) => m.msg || JSON.stringify(m)).join("; ");
      if (code || msg) return `${status} ${code}${code && msg ? ": " : ""}${msg}`;
    }
    return `${status} ${typeof body === "string" ? body : "request failed"}`;
  }

  async function segment() {
    if (!state.file) return;
    const seq = ++state.requestSeq;
    const params = new URLSearchParams({
      score_threshold: $("score-threshold").value,
      mask_threshold: $("mask-threshold").value,
    });
    const form = new FormData();
    form.append("image", state.file, state.fileName || "image");
    const headers = {};
    const key = $("api-key").value.trim();
    if (key) headers.Authorization = `Bearer ${key}`;
    setStatus(`Segmenting ${state.fileName}…`, "loading");
    const t0 = performance.now();
    let resp, body;
    try {
      resp = await fetch(`v1/segment?${params}`, { method: "POST", body: form, headers });
      const text = await resp.text();
      try { body = JSON.parse(text); } catch { body = text; }
    } catch (err) {
      if (seq === state.requestSeq) setStatus(`Network error: ${err.message}`, "error");
      return;
    }
    if (seq !== state.requestSeq) return;
    const roundTrip = performance.now() - t0;
    if (!resp.ok) {
      let msg = errorText(resp.status, body);
      const retry = resp.headers.get("Retry-After");
      if (retry) msg += ` (retry after ${retry} s)`;
      setStatus(msg, "error");
      return;
    }
    state.response = body;
    try {
      draw();
    } catch (err) {
      setStatus(`Could not draw the result: ${err.message}`, "error");
      return;
    }
    renderLegend(body.detections);
    renderTables(body, roundTrip);
    const n = body.detections.length;
    setStatus(
      `${state.fileName}: ${n} detection${n === 1 ? "" : "s"} ` +
        `(${body.image.width}×${body.image.height}, ${roundTrip.toFixed(0)} ms)`,
      "done",
    );
    window.maskxDemo.lastResponse = body;
  }

  async function useImage(blob, name) {
    let bitmap;
    try {
      // Applies EXIF orientation, as the service does, so boxes line up.
      bitmap = await createImageBitmap(blob, { imageOrientation: "from-image" });
    } catch {
      bitmap = null; // the browser cannot decode it: let the server say why
    }
    state.file = blob;
    state.fileName = name;
    state.bitmap = bitmap;
    state.response = null;
    if (bitmap) draw();
    await segment();
  }

  // ---- wiring ------------------------------------------------------------------------------

  function bindSlider(input, output) {
    let timer = null;
    input.addEventListener("input", () => {
      output.textContent = Number(input.value).toFixed(2);
      clearTimeout(timer);
      timer = setTimeout(segment, 250); // re-query once the slider rests
    });
  }

  function setup() {
    window.maskxDemo = { lastResponse: null, rleDecode, classColor };
    for (const source of Object.keys(HUE_RANGES)) {
      document.querySelectorAll(`.swatch.${source}`).forEach((el) => {
        el.style.background = css(familyColor(source));
      });
    }
    renderLegend([]);

    $("api-key-form").addEventListener("submit", (e) => { e.preventDefault(); segment(); });
    $("file-input").addEventListener("change", (e) => {
      const f = e.target.files[0];
      if (f) useImage(f, f.name);
    });
    const zone = $("drop-zone");
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("dragging");
      const f = e.dataTransfer.files[0];
      if (f) useImage(f, f.name);
    });

    const list = $("sample-list");
    for (const name of SAMPLES) {
      const btn = document.createElement("button");
      btn.type = "button";
      btn.className = "sample";
      btn.dataset.sample = name;
      btn.title = `segment ${name}`;
      const img = document.createElement("img");
      img.src = `static/samples/${name}`;
      img.alt = name;
      btn.append(img);
      btn.addEventListener("click", async () => {
        const r = await fetch(`static/samples/${name}`);
        if (!r.ok) { setStatus(`Could not load sample ${name}: ${r.status}`, "error"); return; }
        await useImage(await r.blob(), name);
      });
      list.append(btn);
    }

    bindSlider($("score-threshold"), $("score-value"));
    bindSlider($("mask-threshold"), $("mask-value"));
    $("show-masks").addEventListener("change", draw);
    $("show-boxes").addEventListener("change", draw);

    fetch("v1/model")
      .then(async (r) => {
        const body = await r.json().catch(() => null);
        if (!r.ok) throw new Error(errorText(r.status, body));
        const nA = (body.mask_classes || []).filter(Boolean).length;
        const nClasses = body.num_classes ?? (body.classes || []).length;
        const parts = [`${body.name} ${body.version}`, `${nClasses} classes`];
        if (body.mask_classes) parts.push(`${nA} with mask supervision (A), ${nClasses - nA} transferred (B)`);
        if (body.provider || body.providers) parts.push(`runtime: ${body.provider || body.providers}`);
        $("model-info").textContent = parts.join(" · ");
        $("model-info").dataset.loaded = "true";
      })
      .catch((err) => { $("model-info").textContent = `model information unavailable: ${err.message}`; });
  }

  setup();
})();
