// Model cards: every model's status, headline metrics, all measured metrics, its pictures
// (training curves, samples) and its card.md, from /v1/models/{name} and the files route.

import { getJSON, objectURL, request } from "./api.js";
import { $, clear, formatNumber, h, percent } from "./dom.js";
import { datasetTitle, modelDetails, newestVersion } from "./models.js";
import { renderMarkdown } from "./markdown.js";

const TASKS = {
  classification: "classifier",
  "language-model": "language model",
  "image-generation": "image generator",
};
// Headline metrics that read best as percentages; the rest are shown as numbers.
const FRACTIONS = new Set(["test_accuracy", "class_consistency", "validation_accuracy"]);
const PICTURE_ORDER = ["curves.png", "samples.png"];

export function setupCards(models) {
  const grid = $("#card-grid");
  const ready = models.filter((m) => m.ready).length;
  $("#cards-summary").textContent = `${models.length} models, ${ready} ready`;
  if (!models.length) {
    clear(grid, h("p.empty", "The repository has no models."));
    return;
  }
  const order = ["classification", "language-model", "image-generation"];
  const sorted = [...models].sort(
    (a, b) => order.indexOf(a.task) - order.indexOf(b.task) || a.id.localeCompare(b.id),
  );
  clear(grid, sorted.map((m) => modelCard(m)));
}

function modelCard(model) {
  const version = newestVersion(model);
  const body = h("div.card-body");
  const card = h(
    "article.model-card",
    { dataset: { model: model.id }, "aria-labelledby": `card-${model.id}` },
    h(
      "header",
      h("h3", { id: `card-${model.id}` }, model.id),
      h(`span.badge.task-${model.task || "unknown"}`, TASKS[model.task] || model.task || "unknown"),
    ),
    h(
      "p.card-meta",
      h(`span.dot.${model.ready ? "ok" : "down"}`, { "aria-hidden": "true" }),
      model.ready ? "ready" : "not ready",
      " · ",
      [model.family, datasetTitle(model.dataset)].filter(Boolean).join(" · "),
      version ? ` · v${model.versions.join(", v")}` : "",
      model.provider ? ` · ${model.provider.replace("ExecutionProvider", "")}` : "",
    ),
    model.reason ? h("p.error", model.reason) : null,
    headline(model.metrics || {}),
    body,
  );
  if (version !== null) fillDetails(model, version, body);
  return card;
}

function headline(metrics) {
  const entries = Object.entries(metrics).filter(([, v]) => typeof v === "number");
  if (!entries.length) return null;
  return h(
    "dl.headline",
    entries.map(([key, value]) =>
      h(
        "div",
        h("dt", key.replace(/_/g, " ")),
        h("dd", FRACTIONS.has(key) && value <= 1 ? percent(value, 2) : formatNumber(value)),
      ),
    ),
  );
}

async function fillDetails(model, version, body) {
  try {
    const [detail, files] = await Promise.all([
      modelDetails(model.id),
      getJSON(`/v1/models/${encodeURIComponent(model.id)}/versions/${version}/files`).catch(() => ({ files: [] })),
    ]);
    const card = (detail.cards || {})[String(version)] || {};
    const pictures = files.files
      .filter((f) => f.endsWith(".png"))
      .sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
    const parts = [
      ...pictures.map((name) => picture(model.id, version, name)),
      metricsTable(card.metrics || {}),
      files.files.includes("card.md") ? markdownCard(model.id, version) : null,
    ];
    body.append(...parts.filter(Boolean));
    const extras = [card.created && `trained ${card.created.slice(0, 10)}`, card.dataset?.source].filter(Boolean);
    if (extras.length) body.append(h("p.card-foot", extras.join(" · ")));
  } catch (error) {
    body.append(h("p.error", error.message));
  }
}

function rank(name) {
  const i = PICTURE_ORDER.indexOf(name);
  return i < 0 ? PICTURE_ORDER.length : i;
}

function fileURL(model, version, name) {
  return `/v1/models/${encodeURIComponent(model)}/versions/${version}/files/${encodeURIComponent(name)}`;
}

function picture(model, version, name) {
  const img = h("img", { alt: `${name.replace(/\.png$/, "").replace(/[_-]/g, " ")} of ${model}` });
  const link = h("a", { target: "_blank", rel: "noopener", title: `Open ${name} full size` }, img);
  objectURL(fileURL(model, version, name))
    .then((url) => {
      img.src = url;
      link.href = url;
    })
    .catch(() => link.closest("figure")?.remove());
  return h("figure.card-picture", link, h("figcaption", name));
}

function metricsTable(metrics) {
  const scalars = Object.entries(metrics).filter(([, v]) => typeof v === "number" || typeof v === "string");
  const nested = Object.entries(metrics).filter(([, v]) => v && typeof v === "object" && !Array.isArray(v));
  if (!scalars.length && !nested.length) return null;
  return h(
    "details.metrics",
    h("summary", `All metrics (${scalars.length + nested.length})`),
    h(
      "table.table",
      h("tbody", scalars.map(([k, v]) => h("tr", h("th", { scope: "row" }, k.replace(/_/g, " ")), h("td", formatNumber(v))))),
    ),
    nested.map(([k, v]) =>
      h(
        "div.nested",
        h("p.subhead", k.replace(/_/g, " ")),
        h(
          "div.kv-grid",
          Object.entries(v).map(([label, value]) => h("span", h("b", label), " ", typeof value === "number" ? formatNumber(value) : String(value))),
        ),
      ),
    ),
  );
}

function markdownCard(model, version) {
  const content = h("div.markdown", "Loading…");
  const details = h("details.card-md", h("summary", "Model card (card.md)"), content);
  details.addEventListener(
    "toggle",
    async () => {
      try {
        const text = await (await request(fileURL(model, version, "card.md"))).text();
        clear(content, renderMarkdown(text));
      } catch (error) {
        clear(content, h("p.error", error.message));
      }
    },
    { once: true },
  );
  return details;
}
