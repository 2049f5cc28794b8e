// The server's OpenAI API from the browser: the key, JSON calls, streamed chat completions (SSE).
// Every call goes to this page's own origin and carries `Authorization: Bearer <key>` when a key
// is set. Errors become ApiError with the OpenAI body's message, code, param and type.

const KEY_STORAGE = "llava-serve.api-key";

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code ?? null;
    this.param = error.param ?? null;
    this.type = error.type ?? null;
  }
}

export class Api {
  constructor(storage = window.localStorage) {
    this.storage = storage;
  }

  get key() {
    return this.storage.getItem(KEY_STORAGE) || "";
  }

  set key(value) {
    if (value) this.storage.setItem(KEY_STORAGE, value);
    else this.storage.removeItem(KEY_STORAGE);
  }

  headers(extra = {}) {
    const headers = { ...extra };
    if (this.key) headers.Authorization = `Bearer ${this.key}`;
    return headers;
  }

  async get(path) {
    const response = await fetch(path, { headers: this.headers(), cache: "no-store" });
    if (!response.ok) throw new ApiError(response.status, await readJson(response));
    return response;
  }

  async getJson(path) {
    return (await this.get(path)).json();
  }

  // Yields every parsed `data:` event of a streamed chat completion until `[DONE]`.
  // An `{"error": ...}` event (a failure after the stream started) is thrown as ApiError.
  async *chat(body, signal) {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: this.headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
      signal,
    });
    if (!response.ok) throw new ApiError(response.status, await readJson(response));
    for await (const event of sseEvents(response.body)) {
      if (event.error) throw new ApiError(0, event); // status 0: the failure came mid-stream
      yield event;
    }
  }
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

export async function* sseEvents(stream) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  } finally {
    reader.releaseLock();
  }
}
