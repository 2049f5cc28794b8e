// Attached files -> OpenAI content parts, their thumbnails, and the server's `media` report drawn:
// an image's anyres crop grid over its thumbnail with each part's token count, a video's sampled
// frames with their timestamps, an audio item's length; encoder cache hits marked.
// Everything user-supplied goes into the page as text or as blob: URLs, never as HTML.

import { el } from "./dom.js";

const GRID_BOX = 260; // px: the drawn grid fits a square of this side
const AUDIO_FORMATS = { wav: "wav", wave: "wav", "x-wav": "wav", mpeg: "mp3", mp3: "mp3", flac: "flac", ogg: "ogg" };

export function kindOf(file) {
  const type = file.type || "";
  if (type.startsWith("image/")) return "image";
  if (type.startsWith("video/")) return "video";
  if (type.startsWith("audio/")) return "audio";
  const ext = extension(file.name);
  if (["png", "jpg", "jpeg", "gif", "webp", "bmp"].includes(ext)) return "image";
  if (["mp4", "mov", "webm", "mkv", "avi"].includes(ext)) return "video";
  if (["wav", "mp3", "flac", "ogg"].includes(ext)) return "audio";
  return "image"; // the server says what it is not
}

function extension(name) {
  const dot = (name || "").lastIndexOf(".");
  return dot < 0 ? "" : name.slice(dot + 1).toLowerCase();
}

function readDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

// One attached file, ready to send: {kind, name, objectUrl, part}
export async function attach(file, kind = kindOf(file)) {
  const dataUrl = await readDataUrl(file);
  const objectUrl = URL.createObjectURL(file);
  let part;
  if (kind === "image") part = { type: "image_url", image_url: { url: dataUrl } };
  else if (kind === "video") part = { type: "video_url", video_url: { url: dataUrl } };
  else {
    const subtype = (file.type.split("/")[1] || "").split(";")[0];
    const format = AUDIO_FORMATS[subtype] || AUDIO_FORMATS[extension(file.name)] || "wav";
    part = { type: "input_audio", input_audio: { data: dataUrl.slice(dataUrl.indexOf(",") + 1), format } };
  }
  return { kind, name: file.name || kind, objectUrl, part };
}

export function thumbnail(item, onRemove) {
  const box = el("figure", { class: `thumb thumb-${item.kind}`, title: item.name, "data-kind": item.kind });
  if (item.kind === "image") box.append(el("img", { src: item.objectUrl, alt: item.name }));
  else if (item.kind === "video") box.append(el("video", { src: `${item.objectUrl}#t=0.1`, muted: "", preload: "metadata" }));
  else box.append(el("span", { class: "thumb-audio", text: "♪" }));
  box.append(el("figcaption", { text: item.name }));
  if (item.kind === "image") box.append(onRemove ? detailToggle(item) : detailNote(item));
  if (onRemove) {
    const remove = el("button", { type: "button", class: "thumb-remove", title: "remove", text: "×" });
    remove.addEventListener("click", onRemove);
    box.append(remove);
  }
  return box;
}

// An image's `image_url.detail`: low = the base view only (one crop at the tower's size), high and
// auto = the checkpoint's aspect handling; auto (the default) is sent as no field at all.
const DETAILS = ["auto", "low", "high"];

function detailToggle(item) {
  const select = el("select", { class: "thumb-detail", "data-testid": "detail", title: "image detail: low = the base view only" });
  select.append(...DETAILS.map((d) => el("option", { value: d, text: `detail ${d}` })));
  select.value = item.part.image_url.detail || "auto";
  select.addEventListener("change", () => {
    if (select.value === "auto") delete item.part.image_url.detail;
    else item.part.image_url.detail = select.value;
  });
  return select;
}

function detailNote(item) {
  const detail = item.part.image_url.detail;
  return el("span", { class: "thumb-detail muted", text: detail ? `detail ${detail}` : "" });
}

// The report of one media item, drawn. `item` is the attachment it came from (for its pixels).
export function drawReport(report, item) {
  const figure = el("figure", { class: `report report-${report.modality}`, "data-testid": "media-report" });
  if (report.processing && report.processing.mode) figure.dataset.mode = report.processing.mode;
  if (report.encoder_cache_hit) figure.classList.add("cache-hit");
  const head = el("figcaption", {}, [
    el("b", { text: `${report.modality} ${report.index + 1}` }),
    el("span", { text: ` · ${describe(report)} · ` }),
    el("b", { class: "tokens", text: `${report.tokens} tokens` }),
  ]);
  if (report.encoder_cache_hit) head.append(el("span", { class: "badge hit", text: "encoder cache hit" }));
  figure.append(head);
  if (report.modality === "image") figure.append(drawImage(report, item));
  else if (report.modality === "video") figure.append(drawVideo(report, item));
  else figure.append(el("div", { class: "audio-bar", text: audioLine(report) }));
  return figure;
}

function describe(report) {
  const s = report.source || {};
  const p = report.processing || {};
  if (report.modality === "image") {
    const grid = p.mode === "base_view" ? "the base view only"
      : p.grid ? `anyres ${p.grid[0]}×${p.grid[1]} crops at ${p.resolution[0]}×${p.resolution[1]}` : "one crop";
    return `${s.format || ""} ${s.width}×${s.height}, ${grid}, detail ${p.detail || "auto"}`;
  }
  if (report.modality === "video") {
    return `${s.format || ""}/${s.codec || ""} ${s.width}×${s.height}, ${s.seconds} s, ${p.frames_sampled} of ${s.frames} frames`;
  }
  return `${s.format || ""} ${s.seconds} s, ${s.sample_rate} Hz × ${s.channels}`;
}

function audioLine(report) {
  const p = report.processing || {};
  return `resampled to ${p.resampled_to} Hz mono: ${p.samples} samples`;
}

function drawImage(report, item) {
  const p = report.processing || {};
  const parts = p.token_parts || { base: report.tokens, crops: [], newlines: 0 };
  const src = item ? item.objectUrl : "";
  const row = el("div", { class: "image-layout" });
  const base = el("div", { class: "base-crop", "data-testid": "base-crop" }, [
    el("img", { src, alt: "" }),
    el("span", { class: "cell-label", text: `base ${parts.base}` }),
  ]);
  const baseLabel = p.grid ? "the whole image, one crop" : p.mode === "base_view" ? "the base view (detail low)" : "the image, one crop";
  row.append(labelled(baseLabel, base));
  if (p.grid) {
    const [cols, rows] = p.grid;
    const [width, height] = p.resolution;
    const canvas = el("div", { class: "grid-canvas", "data-testid": "crop-grid" });
    canvas.style.aspectRatio = `${width} / ${height}`;
    canvas.style.width = `${Math.round(GRID_BOX * Math.min(1, width / height))}px`;
    canvas.append(el("img", { src, alt: "" }));
    const cells = el("div", { class: "grid-cells" });
    cells.style.gridTemplateColumns = `repeat(${cols}, 1fr)`;
    cells.style.gridTemplateRows = `repeat(${rows}, 1fr)`;
    parts.crops.forEach((cropRow, r) =>
      cropRow.forEach((count, c) => {
        const cell = el("div", { class: "grid-cell", "data-testid": "crop-cell", title: `crop row ${r + 1}, column ${c + 1}` });
        if (count === 0) cell.classList.add("empty-cell");
        cell.append(el("span", { class: "cell-label", text: String(count) }));
        cells.append(cell);
      }),
    );
    canvas.append(cells);
    row.append(labelled(`${cols}×${rows} crops, padding cut away`, canvas));
  }
  const extra = parts.newlines ? ` + ${parts.newlines} newline` : "";
  const sum = el("p", { class: "muted small", text: `${parts.base} base + ${gridSum(parts)} grid${extra} = ${report.tokens}` });
  return el("div", {}, [row, sum]);
}

function gridSum(parts) {
  return parts.crops.flat().reduce((a, b) => a + b, 0);
}

function labelled(text, node) {
  return el("div", { class: "labelled" }, [node, el("span", { class: "muted small", text })]);
}

function drawVideo(report, item) {
  const p = report.processing || {};
  const frames = el("div", { class: "frames", "data-testid": "video-frames" });
  const perFrame = Math.round(report.tokens / Math.max(p.frames_sampled || 1, 1));
  const tiles = (p.timestamps || []).map((t, i) => {
    const canvas = el("canvas", { width: "96", height: "72" });
    const tile = el("div", { class: "frame", "data-testid": "video-frame" }, [
      canvas,
      el("span", { class: "cell-label", text: `${t.toFixed(2)} s` }),
      el("span", { class: "frame-index muted small", text: `#${p.frame_indices ? p.frame_indices[i] : i}` }),
    ]);
    frames.append(tile);
    return { canvas, time: t };
  });
  if (item) paintFrames(item.objectUrl, tiles);
  const note = `≈${perFrame} tokens a frame` + (report.audio_track ? `; audio track ${report.audio_track.tokens} tokens` : "");
  return el("div", {}, [frames, el("p", { class: "muted small", text: note })]);
}

// Seek a hidden <video> to each timestamp and copy the frame; a codec the browser lacks leaves
// the tiles blank (the timestamps are still there).
async function paintFrames(url, tiles) {
  const video = el("video", { src: url, muted: "", preload: "auto" });
  try {
    await once(video, "loadeddata");
    for (const { canvas, time } of tiles) {
      video.currentTime = Math.min(time, Math.max(video.duration - 0.001, 0));
      await once(video, "seeked");
      const ctx = canvas.getContext("2d");
      const scale = Math.min(canvas.width / video.videoWidth, canvas.height / video.videoHeight);
      const w = video.videoWidth * scale;
      const h = video.videoHeight * scale;
      ctx.drawImage(video, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
      canvas.classList.add("painted");
    }
  } catch {
    // an undecodable video in this browser: timestamps only
  } finally {
    video.removeAttribute("src");
    video.load();
  }
}

function once(target, name, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} timed out`)), timeoutMs);
    target.addEventListener(name, () => { clearTimeout(timer); resolve(); }, { once: true });
    target.addEventListener("error", () => { clearTimeout(timer); reject(new Error("media error")); }, { once: true });
  });
}
