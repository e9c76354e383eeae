// Talking to the service: the API key, JSON calls with readable errors, and a server-sent-events
// reader for streamed completions (fetch + ReadableStream: EventSource cannot POST).

const KEY_STORAGE = "seedserve.apiKey";

export function apiKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

/** An error from the service, with its HTTP status and the service's `{"error": ...}` text. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const listeners = new Set();
/** Called with every ApiError (the page shows a banner for 401s). */
export function onApiError(listener) {
  listeners.add(listener);
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    message = errorText(body) || message;
  } catch {
    /* not JSON: keep the status line */
  }
  const error = new ApiError(response.status, message);
  listeners.forEach((listener) => listener(error));
  return error;
}

/** The message of our `{"error": "..."}` or of OpenAI's `{"error": {"message": ...}}`. */
function errorText(body) {
  const error = body && body.error;
  if (!error) return "";
  return typeof error === "string" ? error : error.message || JSON.stringify(error);
}

/** fetch() with the API key; throws ApiError for any non-2xx answer. */
export async function request(path, { method = "GET", body, signal, accept } = {}) {
  const init = { method, signal, headers: headers(accept ? { Accept: accept } : {}) };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response;
}

export async function getJSON(path, options) {
  return (await request(path, options)).json();
}

export async function postJSON(path, body, options = {}) {
  return (await request(path, { ...options, method: "POST", body })).json();
}

/** A blob: URL for a protected file (an <img> cannot send the Authorization header). */
export async function objectURL(path, options) {
  const blob = await (await request(path, options)).blob();
  return URL.createObjectURL(blob);
}

/**
 * Split a server-sent-events byte stream into the `data` of each event.
 * Events end with a blank line; an event's data lines are joined with "\n" (the SSE spec).
 */
export async function* sseData(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.search(/\r?\n\r?\n|\r\r/)) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^(\r?\n\r?\n|\r\r)/, "");
        const data = dataOf(event);
        if (data !== null) yield data;
      }
    }
    const data = dataOf(buffer);
    if (data !== null) yield data;
  } finally {
    reader.releaseLock();
  }
}

function dataOf(event) {
  const lines = event
    .split(/\r?\n|\r/)
    .filter((line) => line.startsWith("data:"))
    .map((line) => line.slice(5).replace(/^ /, ""));
  return lines.length ? lines.join("\n") : null;
}

/**
 * Stream an OpenAI-style completion; `onText(piece, choice)` for each piece as it arrives.
 * Resolves to the finish reason. A server that answers with plain JSON is handled too.
 */
export async function streamCompletion(body, { signal, onText }) {
  const response = await request("/v1/completions", {
    method: "POST",
    body: { ...body, stream: true },
    signal,
    accept: "text/event-stream",
  });
  const type = response.headers.get("content-type") || "";
  if (!type.includes("text/event-stream")) {
    const whole = await response.json();
    const choice = (whole.choices || [])[0] || {};
    onText(choice.text || "", choice);
    return choice.finish_reason || null;
  }
  let finish = null;
  for await (const data of sseData(response.body)) {
    if (data.trim() === "[DONE]") break;
    let chunk;
    try {
      chunk = JSON.parse(data);
    } catch {
      continue; // a comment or keep-alive we do not understand
    }
    if (chunk.error) throw new ApiError(500, errorText(chunk)); // after the 200, errors are events
    for (const choice of chunk.choices || []) {
      if (choice.text) onText(choice.text, choice);
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  return finish;
}
