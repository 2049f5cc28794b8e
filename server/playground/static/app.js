// The playground's entry: connects to the server (asking for the API key when it wants one),
// wires the composer (text, attachments by picker, drag and drop, paste, microphone), the
// sampling controls, the conversation and the live panel.

import { Api, ApiError } from "./api.js";
import { Conversation, errorCard } from "./chat.js";
import { byId, clear } from "./dom.js";
import { attach, thumbnail } from "./media.js";
import { LivePanel } from "./metrics.js";
import { MicRecorder } from "./recorder.js";

const api = new Api();
const live = new LivePanel(api);
const mic = new MicRecorder();
const pending = []; // attachments of the message being written
let model = null;

const conversation = new Conversation(api, byId("messages"), () => ({ model, system: byId("system-prompt").value.trim(), params: samplingParams() }));

function samplingParams() {
  const params = {};
  const number = (id) => {
    const raw = byId(id).value.trim();
    return raw === "" ? null : Number(raw);
  };
  const fields = { temperature: "temperature", top_p: "top-p", top_k: "top-k", max_tokens: "max-tokens", seed: "seed" };
  for (const [name, id] of Object.entries(fields)) {
    const value = number(id);
    if (value !== null) params[name] = value;
  }
  if (byId("ignore-eos").checked) params.ignore_eos = true;
  return params;
}

// -- connecting and the key ------------------------------------------------------------------
async function connect() {
  try {
    const models = await api.getJson("/v1/models");
    const card = models.data[0];
    model = card.id;
    byId("model-name").textContent = `${card.id} · ${card.modalities.join(", ")} · context ${card.max_model_len}`;
    const note = byId("model-note");
    note.textContent = card.description || "";
    note.hidden = !/random/i.test(card.description || "");
    const hasAudio = card.modalities.includes("audio");
    byId("mic-button").disabled = !hasAudio;
    byId("mic-button").title = hasAudio ? "Record a question from the microphone" : "this model has no audio tower";
    byId("key-panel").hidden = true;
    setStatus("");
    live.start();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      askForKey(api.key ? `The key was refused: ${error.message}` : "");
    } else if (error instanceof ApiError && error.status === 503) {
      byId("model-name").textContent = "loading the model…";
      setTimeout(connect, 2000);
    } else {
      byId("model-name").textContent = "server unreachable";
      setStatus(error.message);
      setTimeout(connect, 5000);
    }
  }
}

function askForKey(message) {
  byId("key-panel").hidden = false;
  byId("key-prompt").textContent = "This server needs an API key.";
  byId("key-error").textContent = message;
  byId("model-name").textContent = "needs an API key";
  byId("key-input").focus();
}

byId("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  api.key = byId("key-input").value.trim();
  byId("key-input").value = "";
  connect();
});
byId("key-forget").addEventListener("click", () => {
  api.key = "";
  askForKey("");
});
byId("key-button").addEventListener("click", () => {
  const panel = byId("key-panel");
  panel.hidden = !panel.hidden;
  byId("key-prompt").textContent = api.key ? "A key is set; replace it:" : "API key (only for a server started with --api-key):";
});

// -- attachments -----------------------------------------------------------------------------
async function addFiles(files) {
  for (const file of files) {
    try {
      pending.push(await attach(file));
    } catch (error) {
      setStatus(`could not read ${file.name}: ${error.message}`);
    }
  }
  drawPending();
}

function drawPending() {
  const tray = byId("attachments");
  clear(tray);
  pending.forEach((item, i) =>
    tray.append(thumbnail(item, () => {
      pending.splice(i, 1);
      drawPending();
    })),
  );
}

byId("file-input").addEventListener("change", (event) => {
  addFiles([...event.target.files]);
  event.target.value = "";
});

const dropZone = byId("drop-zone");
dropZone.addEventListener("dragover", (event) => {
  event.preventDefault();
  dropZone.classList.add("dragging");
});
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragging"));
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropZone.classList.remove("dragging");
  addFiles([...event.dataTransfer.files]);
});
byId("prompt").addEventListener("paste", (event) => {
  const files = [...(event.clipboardData?.files || [])].filter((f) => f.type.startsWith("image/"));
  if (files.length) {
    event.preventDefault();
    addFiles(files);
  }
});

byId("mic-button").addEventListener("click", async () => {
  const button = byId("mic-button");
  try {
    if (!mic.isRecording) {
      await mic.start();
      button.classList.add("recording");
      setStatus("recording… click the microphone again to stop");
    } else {
      button.classList.remove("recording");
      setStatus("");
      await addFiles([await mic.stop()]);
    }
  } catch (error) {
    button.classList.remove("recording");
    setStatus(`microphone: ${error.message}`);
  }
});

// -- sending ---------------------------------------------------------------------------------
async function send() {
  const text = byId("prompt").value.trim();
  if (conversation.isBusy || (!text && !pending.length)) return;
  if (!model) {
    setStatus("not connected to the server yet");
    return;
  }
  byId("empty").hidden = true;
  byId("prompt").value = "";
  const media = pending.splice(0);
  drawPending();
  await conversation.send(text, media);
}

conversation.onBusy = (busy) => {
  byId("send-button").hidden = busy;
  byId("stop-button").hidden = !busy;
};
byId("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
byId("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
byId("stop-button").addEventListener("click", () => conversation.stop());
byId("clear-button").addEventListener("click", () => {
  conversation.clear();
  byId("empty").hidden = false;
});

function setStatus(text) {
  byId("composer-status").textContent = text;
}

window.addEventListener("unhandledrejection", (event) => {
  const card = errorCard(event.reason instanceof Error ? event.reason : new Error(String(event.reason)));
  byId("messages").append(card);
});

connect();
