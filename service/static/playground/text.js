// Language models: next-word suggestions from every model as the user types (debounced, stale
// requests aborted), and completions streamed token by token from every model side by side.

import { postJSON, streamCompletion } from "./api.js";
import { $, clear, debounce, h, percent } from "./dom.js";

const SUGGESTIONS = 5;
const NO_SPACE_BEFORE = /^(?:[,.;:!?)\]}'’]|'s|’s|n't)$/;

export function setupText(models) {
  const lms = models.filter((m) => m.task === "language-model" && m.ready);
  const results = $("#lm-results");
  const prompt = $("#prompt");
  const form = $("#complete-form");
  const stop = $("#complete-stop");
  const start = $("#complete");
  if (!lms.length) {
    clear(results, h("p.empty", "No language model is ready."));
    start.disabled = true;
    return;
  }

  clear(
    results,
    lms.map((m) =>
      h(
        "article.result.lm",
        { dataset: { model: m.id } },
        h("header", h("h3", m.id), h("span.tag", m.family || "model")),
        h("p.subhead", "Next word"),
        h("ul.chips", { "aria-label": `${m.id} next-word suggestions` }),
        h("p.subhead", "Completion"),
        h("p.completion", { "aria-live": "off" }, h("span.echo"), h("span.generated")),
        h("p.meta", "Press “Stream a completion”."),
      ),
    ),
  );
  const cardOf = (m) => results.querySelector(`[data-model="${CSS.escape(m.id)}"]`);

  let suggestAbort = null;
  async function suggest() {
    suggestAbort?.abort();
    const abort = (suggestAbort = new AbortController());
    const text = prompt.value;
    await Promise.all(
      lms.map(async (m) => {
        const chips = cardOf(m).querySelector(".chips");
        chips.classList.add("busy");
        try {
          const answer = await postJSON(
            `/v1/models/${encodeURIComponent(m.id)}/next-word`,
            { text, top_k: SUGGESTIONS },
            { signal: abort.signal },
          );
          showSuggestions(chips, answer.predictions || []);
        } catch (error) {
          if (error.name === "AbortError") return;
          clear(chips, h("li.error", error.message));
        } finally {
          if (!abort.signal.aborted) chips.classList.remove("busy");
        }
      }),
    );
  }

  function showSuggestions(chips, predictions) {
    clear(
      chips,
      predictions.map((p) =>
        h(
          "li",
          h(
            "button.chip",
            {
              type: "button",
              title: `Append “${visibleWord(p.word)}” (${percent(p.probability)})`,
              on: { click: () => take(p.word) },
            },
            h("span.word", visibleWord(p.word)),
            h("span.prob", percent(p.probability, 0)),
            h("span.chip-bar", { style: { width: percent(p.probability) } }),
          ),
        ),
      ),
    );
  }

  function take(word) {
    prompt.value = appendWord(prompt.value, word);
    prompt.focus();
    suggest();
  }

  const suggestSoon = debounce(suggest, 250);
  prompt.addEventListener("input", suggestSoon);
  suggest();

  let streamAbort = null;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    streamAbort?.abort();
    const abort = (streamAbort = new AbortController());
    start.disabled = true;
    stop.disabled = false;
    const body = completionRequest(prompt.value);
    await Promise.all(lms.map((m) => streamInto(cardOf(m), { ...body, model: m.id }, abort.signal)));
    if (streamAbort === abort) {
      start.disabled = false;
      stop.disabled = true;
    }
  });
  stop.addEventListener("click", () => {
    streamAbort?.abort();
    start.disabled = false;
    stop.disabled = true;
  });
}

function completionRequest(text) {
  const number = (id) => {
    const value = $(id).value.trim();
    return value === "" ? undefined : Number(value);
  };
  const body = {
    prompt: text,
    max_tokens: number("#max-tokens") ?? 40,
    temperature: number("#temperature") ?? 1,
    top_p: number("#top-p") ?? 1,
  };
  const topK = number("#top-k");
  if (topK) body.top_k = topK;
  const seed = number("#text-seed");
  if (seed !== undefined) body.seed = seed;
  return body;
}

async function streamInto(card, body, signal) {
  const echo = card.querySelector(".echo");
  const out = card.querySelector(".generated");
  const meta = card.querySelector(".meta");
  echo.textContent = tail(body.prompt, 120);
  out.textContent = "";
  card.dataset.state = "streaming";
  card.dataset.pieces = "0";
  card.classList.add("busy");
  clear(meta, "Streaming…");
  const started = performance.now();
  let pieces = 0;
  try {
    const finish = await streamCompletion(body, {
      signal,
      onText(piece) {
        out.textContent += piece;
        card.dataset.pieces = String(++pieces);
        card.dispatchEvent(new CustomEvent("token", { detail: piece }));
      },
    });
    const seconds = (performance.now() - started) / 1000;
    const reason = finish === "length" ? "token limit" : finish === "stop" ? "stop" : finish || "end";
    clear(meta, `${pieces} tokens in ${seconds.toFixed(2)} s (${(pieces / seconds).toFixed(1)}/s) · finished: ${reason}`);
    card.dataset.state = "done";
  } catch (error) {
    card.dataset.state = error.name === "AbortError" ? "stopped" : "error";
    clear(meta, error.name === "AbortError" ? "Stopped." : h("span.error", error.message));
  } finally {
    card.classList.remove("busy");
  }
}

function tail(text, n) {
  return text.length > n ? `…${text.slice(-n)}` : text;
}

function visibleWord(word) {
  return word === "\n" ? "¶" : word;
}

/** The prompt with a suggested word appended, spaced as English is written. */
export function appendWord(text, word) {
  if (word === "\n") return `${text.replace(/\s+$/, "")}\n\n`;
  if (!text || /\s$/.test(text) || NO_SPACE_BEFORE.test(word) || /[(\[{“"‘-]$/.test(text)) {
    return text + word;
  }
  return `${text} ${word}`;
}
