// The playground's entry point: the API key, the model list, then one section per task.

import { apiKey, getJSON, onApiError, setApiKey } from "./api.js";
import { setupCards } from "./cards.js";
import { setupClassify } from "./classify.js";
import { $ } from "./dom.js";
import { setupGenerate } from "./generate.js";
import { setupMetrics } from "./metrics.js";
import { setupText } from "./text.js";

function banner(message) {
  const el = $("#banner");
  el.textContent = message;
  el.hidden = !message;
}

function setupKey() {
  const form = $("#key-form");
  const input = $("#api-key");
  const forget = $("#key-clear");
  input.value = apiKey();
  forget.hidden = !apiKey();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(input.value.trim());
    location.reload(); // every section asks again, with the key
  });
  forget.addEventListener("click", () => {
    setApiKey("");
    location.reload();
  });
  let told = false;
  onApiError((error) => {
    if (error.status !== 401 || told) return;
    told = true;
    banner(
      apiKey()
        ? "The service refused this API key. Paste the right one in the API key field above."
        : "This service needs an API key: paste it in the API key field above.",
    );
    input.focus();
  });
}

async function start() {
  setupKey();
  setupMetrics();
  const status = $("#server-status");
  getJSON("/v2")
    .then((server) => (status.dataset.server = `${server.name} ${server.version}`))
    .catch(() => {});
  let models;
  try {
    models = (await getJSON("/v1/models")).data;
  } catch (error) {
    status.textContent = "Could not list the models.";
    if (error.status !== 401) banner(`Could not list the models: ${error.message}`);
    document.body.dataset.ready = "error";
    return;
  }
  const ready = models.filter((m) => m.ready);
  const count = (task) => ready.filter((m) => m.task === task).length;
  status.textContent =
    `${ready.length}/${models.length} models ready · ${count("classification")} classifiers · ` +
    `${count("language-model")} language · ${count("image-generation")} image generators`;
  const classify = setupClassify(models);
  setupText(models);
  setupCards(models);
  await setupGenerate(models, classify);
  document.body.dataset.ready = "yes"; // lets tests know the page has set itself up
}

start();
