// The live panel: the server's own /metrics, read every few seconds. Running and waiting requests
// and KV cache use are gauges; generated tokens per second over the last minute come from the
// `llava_generation_tokens_total` counter's samples kept here (shorter right after the page opens).

import { byId } from "./dom.js";

const POLL_MS = 2000;
const WINDOW_MS = 60_000;

// Prometheus text format -> {name: sum over its label sets}
export function parseMetrics(text) {
  const values = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][\w:]*)(\{.*\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const value = Number(match[3]);
    if (Number.isFinite(value)) values[match[1]] = (values[match[1]] || 0) + value;
  }
  return values;
}

export class LivePanel {
  constructor(api) {
    this.api = api;
    this.samples = []; // [ms, generated tokens so far]
    this.timer = null;
  }

  start() {
    if (this.timer === null) {
      this.poll();
      this.timer = setInterval(() => this.poll(), POLL_MS);
    }
  }

  async poll() {
    let values;
    try {
      values = parseMetrics(await (await this.api.get("/metrics")).text());
    } catch (error) {
      byId("live-status").textContent = error.status === 401 ? "(needs the API key)" : "(unreachable)";
      return;
    }
    byId("live-status").textContent = "";
    const now = performance.now();
    this.samples.push([now, values.llava_generation_tokens_total || 0]);
    while (this.samples.length > 2 && now - this.samples[1][0] >= WINDOW_MS) this.samples.shift();
    byId("live-running").textContent = String(values.llava_requests_running ?? "–");
    byId("live-waiting").textContent = String(values.llava_requests_waiting ?? "–");
    const kv = values.llava_kv_cache_usage_ratio ?? 0;
    byId("live-kv").textContent = `${(kv * 100).toFixed(1)} %`;
    byId("live-kv-meter").value = kv;
    const [t0, n0] = this.samples[0];
    const seconds = (now - t0) / 1000;
    byId("live-throughput").textContent = seconds > 0 ? ((values.llava_generation_tokens_total - n0) / seconds).toFixed(1) : "–";
    byId("live-window").textContent = seconds > 0 ? `over the last ${Math.round(seconds)} s` : "";
    this.draw();
  }

  draw() {
    const canvas = byId("live-chart");
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const rates = [];
    for (let i = 1; i < this.samples.length; i++) {
      const [ta, na] = this.samples[i - 1];
      const [tb, nb] = this.samples[i];
      rates.push(Math.max(0, (nb - na) / ((tb - ta) / 1000)));
    }
    if (!rates.length) return;
    const top = Math.max(...rates, 1);
    const width = canvas.width / (WINDOW_MS / POLL_MS);
    ctx.fillStyle = "#4a7fb5";
    rates.forEach((rate, i) => {
      const h = (rate / top) * (canvas.height - 2);
      const x = canvas.width - (rates.length - i) * width;
      ctx.fillRect(x, canvas.height - h, Math.max(width - 1, 1), h);
    });
  }
}
