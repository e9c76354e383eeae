// What the page knows about models: names of datasets, grouping, and model details (cached).

import { getJSON } from "./api.js";

const DATASETS = {
  mnist: { title: "Digits · MNIST", hint: "Draw a digit (0–9) with the mouse, a pen or a finger.", noun: "digit" },
  "fashion-mnist": {
    title: "Garments · Fashion-MNIST",
    hint: "Draw a garment (a shirt, trousers, a shoe, a bag…) as a white outline or silhouette, or upload a picture.",
    noun: "garment",
  },
};

export function datasetTitle(dataset) {
  return (DATASETS[dataset] || {}).title || dataset || "other";
}

export function drawingHint(dataset) {
  return (DATASETS[dataset] || {}).hint || "Draw something, or upload a picture.";
}

/** What a classifier of the dataset recognises ("digit"), for "not a digit?". */
export function datasetNoun(dataset) {
  return (DATASETS[dataset] || {}).noun || "picture like its training pictures";
}

/** Models grouped by dataset (MNIST first, then Fashion-MNIST, then the others by name). */
export function groupByDataset(models) {
  const order = Object.keys(DATASETS);
  const rank = (d) => (order.includes(d) ? order.indexOf(d) : order.length);
  const sorted = [...models].sort(
    (a, b) => rank(a.dataset) - rank(b.dataset) || String(a.dataset).localeCompare(String(b.dataset)) || a.id.localeCompare(b.id),
  );
  const groups = new Map();
  for (const m of sorted) {
    const key = m.dataset || "other";
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(m);
  }
  return groups;
}

const details = new Map();
/** GET /v1/models/{name}: config (labels, generation defaults) and the full cards. */
export function modelDetails(name) {
  if (!details.has(name)) {
    const promise = getJSON(`/v1/models/${encodeURIComponent(name)}`);
    promise.catch(() => details.delete(name));
    details.set(name, promise);
  }
  return details.get(name);
}

export function newestVersion(model) {
  const versions = (model.versions || []).map(Number).filter(Number.isFinite);
  return versions.length ? Math.max(...versions) : null;
}
