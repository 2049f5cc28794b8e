// The conversation: turns kept in the browser, sent whole on each request (the server's prefix
// and encoder caches make a resent image cheap), answers streamed into their bubble token by
// token. Per answer: TTFT, tokens/s, usage by modality and the media report drawn.

import { ApiError } from "./api.js";
import { el } from "./dom.js";
import { drawReport, thumbnail } from "./media.js";

export class Conversation {
  constructor(api, list, settings) {
    this.api = api;
    this.list = list; // the #messages element
    this.settings = settings; // () => {model, system, params}
    this.turns = []; // {role: "user", text, media: [attachment]} | {role: "assistant", text, node}
    this.controller = null;
    this.epoch = 0; // bumped by clear(): an answer still finishing then leaves the new chat alone
    this.onBusy = () => {};
  }

  get isBusy() {
    return this.controller !== null;
  }

  clear() {
    this.stop();
    this.epoch += 1;
    this.turns = [];
    for (const node of [...this.list.querySelectorAll(".message")]) node.remove();
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  async send(text, media) {
    const turn = { role: "user", text, media };
    turn.node = userBubble(turn);
    this.turns.push(turn);
    this.list.append(turn.node);
    await this.answer();
  }

  async regenerate() {
    const last = this.turns[this.turns.length - 1];
    if (this.isBusy || !last || last.role !== "assistant") return;
    this.turns.pop();
    last.node.remove();
    await this.answer();
  }

  messages() {
    const { system } = this.settings();
    const out = system ? [{ role: "system", content: system }] : [];
    for (const turn of this.turns) {
      if (turn.role === "assistant") {
        if (turn.text) out.push({ role: "assistant", content: turn.text });
        continue;
      }
      const content = turn.media.map((m) => m.part);
      if (turn.text) content.push({ type: "text", text: turn.text });
      out.push({ role: "user", content });
    }
    return out;
  }

  async answer() {
    const users = this.turns.filter((t) => t.role === "user");
    const media = users.flatMap((t) => t.media); // the report's `index` counts every turn's items
    const earlier = media.length - users[users.length - 1].media.length;
    const view = assistantBubble();
    const turn = { role: "assistant", text: "", node: view.node };
    this.list.append(view.node);
    view.copy.addEventListener("click", () => copyText(turn.text, view.copy));
    view.regenerate.addEventListener("click", () => this.regenerate());
    const { params, model } = this.settings();
    const epoch = this.epoch;
    const body = { model, messages: this.messages(), ...params };
    this.controller = new AbortController();
    this.onBusy(true);
    const started = performance.now();
    let firstAt = null;
    let last = null;
    let failed = false;
    try {
      for await (const chunk of this.api.chat(body, this.controller.signal)) {
        last = chunk.usage ? chunk : last;
        const choice = chunk.choices && chunk.choices[0];
        const delta = choice && choice.delta && choice.delta.content;
        if (delta) {
          firstAt = firstAt ?? performance.now();
          turn.text += delta;
          view.text.textContent = turn.text;
          this.list.scrollTop = this.list.scrollHeight;
        }
        if (choice && choice.finish_reason) view.node.dataset.finish = choice.finish_reason;
        if (chunk.media) drawReports(view.reports, chunk.media, media, earlier);
      }
      view.node.dataset.state = "done";
      if (last) view.stats.append(...statsLine(last.usage, started, firstAt, performance.now(), view.node.dataset.finish));
    } catch (error) {
      if (error.name === "AbortError") {
        view.node.dataset.state = "stopped";
        view.stats.append(el("span", { class: "badge", text: "stopped" }));
      } else {
        failed = true;
        view.node.dataset.state = "error";
        view.error.replaceWith(errorCard(error));
      }
    } finally {
      this.controller = null;
      if (epoch === this.epoch) this.settle(turn, failed, view); // unless the chat was cleared meanwhile
      this.onBusy(false);
    }
  }

  settle(turn, failed, view) {
    if (!failed) {
      this.turns.push(turn);
      return;
    }
    // the refused message leaves the conversation (its bubble stays, marked), so the next one can go
    this.turns.pop().node.classList.add("refused");
    view.tools.remove();
  }
}

function drawReports(into, reports, media, earlier) {
  const older = reports.filter((r) => r.index < earlier);
  if (older.length) {
    const hits = older.filter((r) => r.encoder_cache_hit).length;
    into.append(el("p", { class: "muted small", text: `${older.length} earlier media item(s) sent again: ${hits} encoder cache hit(s)` }));
  }
  into.append(...reports.filter((r) => r.index >= earlier).map((r) => drawReport(r, media[r.index])));
}

function userBubble(turn) {
  const node = el("div", { class: "message user", "data-testid": "user-message" });
  if (turn.media.length) node.append(el("div", { class: "attachments sent" }, turn.media.map((m) => thumbnail(m))));
  if (turn.text) node.append(el("div", { class: "text", text: turn.text }));
  return node;
}

function assistantBubble() {
  const text = el("div", { class: "text", "data-testid": "answer" });
  const error = el("div", { hidden: "" });
  const stats = el("div", { class: "stats", "data-testid": "stats" });
  const reports = el("div", { class: "reports" });
  const copy = el("button", { type: "button", class: "ghost small", text: "Copy" });
  const regenerate = el("button", { type: "button", class: "ghost small regenerate", text: "Regenerate" });
  const tools = el("div", { class: "tools" }, [copy, regenerate]);
  const node = el("div", { class: "message assistant", "data-testid": "assistant-message", "data-state": "streaming" },
    [text, error, stats, reports, tools]);
  return { node, text, error, stats, reports, copy, regenerate, tools };
}

export function errorCard(error) {
  const card = el("div", { class: "error-card", role: "alert", "data-testid": "error" });
  card.append(el("div", { class: "error-message", text: error.message }));
  if (error instanceof ApiError) {
    const facts = [error.status ? `HTTP ${error.status}` : "during the answer"];
    if (error.code) facts.push(`code ${error.code}`);
    if (error.param) facts.push(`param ${error.param}`);
    card.append(el("div", { class: "error-facts muted small", text: facts.join(" · ") }));
  }
  return card;
}

function statsLine(usage, started, firstAt, ended, finish) {
  const details = usage.prompt_tokens_details || {};
  const parts = [];
  if (firstAt !== null) {
    parts.push(`TTFT ${((firstAt - started) / 1000).toFixed(2)} s`);
    const seconds = (ended - firstAt) / 1000;
    if (usage.completion_tokens > 1 && seconds > 0) {
      parts.push(`${((usage.completion_tokens - 1) / seconds).toFixed(1)} tokens/s`);
    }
  }
  const modal = ["text", "image", "video", "audio"]
    .filter((m) => details[`${m}_tokens`])
    .map((m) => `${m} ${details[`${m}_tokens`]}`);
  parts.push(`prompt ${usage.prompt_tokens} (${modal.join(", ")})`);
  parts.push(`completion ${usage.completion_tokens}`);
  if (finish) parts.push(`finish ${finish}`);
  const spans = parts.map((p) => el("span", { text: p }));
  if (details.cached_tokens) spans.push(el("span", { class: "badge hit", text: `prefix cache ${details.cached_tokens}` }));
  return spans;
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = el("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  const label = button.textContent;
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = label; }, 1200);
}
