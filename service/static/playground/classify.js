// Classify: a drawing pad (or an uploaded picture) sent to every ready classifier of a dataset,
// each model's top-k shown side by side.

import { postJSON } from "./api.js";
import { $, clear, debounce, h, percent, segmented } from "./dom.js";
import { datasetNoun, datasetTitle, drawingHint, groupByDataset } from "./models.js";

const TOP_K = 3;

export function setupClassify(models) {
  const groups = groupByDataset(models.filter((m) => m.task === "classification" && m.ready));
  const results = $("#classify-results");
  const pad = new DrawingPad($("#pad"), () => classifySoon());
  let dataset = groups.keys().next().value;
  let source = null; // a data URL: the uploaded or generated picture, until the user draws again
  let generation = 0;

  if (!groups.size) {
    clear(results, h("p.empty", "No classifier is ready."));
    return { show() {} };
  }

  const chooseDataset = (value) => {
    dataset = value;
    $("#pad-hint").textContent = drawingHint(value);
    renderPlaceholders();
    if (!pad.blank || source) classifyNow();
  };
  segmented(
    $("#classify-datasets"),
    "classify-dataset",
    [...groups.keys()].map((d) => ({ value: d, label: datasetTitle(d) })),
    dataset,
    chooseDataset,
  );

  function renderPlaceholders() {
    clear(
      results,
      groups.get(dataset).map((m) =>
        h(
          "article.result.classifier",
          { dataset: { model: m.id } },
          h("header", h("h3", m.id), h("span.tag", m.family || "model")),
          h("p.ood", { hidden: true }, `not a ${datasetNoun(m.dataset)}?`),
          h("ol.bars", { "aria-label": `${m.id} predictions` }),
          h("p.meta", pad.blank && !source ? "Waiting for a drawing" : "…"),
        ),
      ),
    );
  }

  async function classifyNow() {
    const image = source || pad.dataURL();
    if (!image || (pad.blank && !source)) return;
    const mine = ++generation;
    await Promise.all(
      groups.get(dataset).map(async (m) => {
        const card = results.querySelector(`[data-model="${CSS.escape(m.id)}"]`);
        if (!card) return;
        card.classList.add("busy");
        try {
          const answer = await postJSON(
            `/v1/models/${encodeURIComponent(m.id)}/classify?top_k=${TOP_K}`,
            { image },
          );
          if (mine !== generation) return;
          showPrediction(card, answer);
        } catch (error) {
          if (mine !== generation) return;
          clear(card.querySelector(".bars"));
          card.querySelector(".ood").hidden = true;
          clear(card.querySelector(".meta"), h("span.error", error.message));
        } finally {
          card.classList.remove("busy");
        }
      }),
    );
    if (mine === generation) results.dataset.done = String(mine); // tests wait for this
  }
  const classifySoon = debounce(() => {
    source = null;
    classifyNow();
  }, 120);

  $("#pad-clear").addEventListener("click", () => {
    pad.clear();
    source = null;
    generation++;
    renderPlaceholders();
  });
  $("#pad-brush").addEventListener("input", (e) => (pad.brush = Number(e.target.value)));
  $("#pad-upload").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    if (!file) return;
    show(await readAsDataURL(file));
    e.target.value = "";
  });

  /** Show a picture (data URL) on the pad and classify it as it is. */
  async function show(dataURL, datasetHint) {
    if (datasetHint && groups.has(datasetHint) && datasetHint !== dataset) {
      const radio = document.getElementById(`classify-dataset-${datasetHint}`.replace(/[^A-Za-z0-9_-]/g, "_"));
      if (radio) radio.checked = true;
      dataset = datasetHint;
      $("#pad-hint").textContent = drawingHint(dataset);
      renderPlaceholders();
    }
    await pad.drawPicture(dataURL);
    source = dataURL;
    classifyNow();
  }

  renderPlaceholders();
  $("#pad-hint").textContent = drawingHint(dataset);
  return { show };
}

function showPrediction(card, answer) {
  const predictions = answer.predictions[0] || [];
  clear(
    card.querySelector(".bars"),
    predictions.map((p, i) =>
      h(
        "li",
        { class: i === 0 ? "top" : "" },
        h("span.label", p.label),
        h(
          "span.bar",
          { role: "meter", "aria-valuemin": "0", "aria-valuemax": "1", "aria-valuenow": p.probability.toFixed(4), "aria-label": `${p.label}` },
          h("span.fill", { style: { width: percent(p.probability) } }),
        ),
        h("span.value", percent(p.probability)),
      ),
    ),
  );
  const top = predictions[0];
  card.dataset.top = top ? top.label : "";
  // the out-of-distribution check (absent for a model without a fitted threshold)
  const check = (answer.ood || [])[0];
  card.dataset.inDistribution = check ? String(check.in_distribution) : "";
  const flag = card.querySelector(".ood");
  flag.hidden = !check || check.in_distribution;
  flag.title = check ? `score ${check.score.toFixed(2)} > threshold ${check.threshold.toFixed(2)}` : "";
  clear(
    card.querySelector(".meta"),
    `v${answer.model_version} · ${answer.timing.inference_ms.toFixed(1)} ms inference, ${answer.timing.total_ms.toFixed(1)} ms total`,
  );
}

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

/** A square canvas to draw white strokes on black (as MNIST digits are), with pointer events. */
class DrawingPad {
  constructor(canvas, onStroke) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.onStroke = onStroke;
    this.brush = 22;
    this.blank = true;
    this.last = null;
    this.clear();
    canvas.addEventListener("pointerdown", (e) => this.down(e));
    canvas.addEventListener("pointermove", (e) => this.move(e));
    canvas.addEventListener("pointerup", (e) => this.up(e));
    canvas.addEventListener("pointercancel", (e) => this.up(e));
    canvas.addEventListener("keydown", (e) => {
      if (e.key === "Delete" || e.key === "Backspace") {
        e.preventDefault();
        document.getElementById("pad-clear").click();
      }
    });
  }

  clear() {
    this.ctx.fillStyle = "#000";
    this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    this.blank = true;
  }

  point(e) {
    const rect = this.canvas.getBoundingClientRect();
    return {
      x: ((e.clientX - rect.left) * this.canvas.width) / rect.width,
      y: ((e.clientY - rect.top) * this.canvas.height) / rect.height,
    };
  }

  down(e) {
    e.preventDefault();
    this.canvas.setPointerCapture?.(e.pointerId);
    this.last = this.point(e);
    this.line(this.last, this.last);
  }

  move(e) {
    if (!this.last) return;
    const p = this.point(e);
    this.line(this.last, p);
    this.last = p;
  }

  up() {
    if (!this.last) return;
    this.last = null;
    this.onStroke();
  }

  line(a, b) {
    const ctx = this.ctx;
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = this.brush;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(a.x, a.y);
    ctx.lineTo(b.x, b.y);
    ctx.stroke();
    this.blank = false;
  }

  dataURL() {
    return this.canvas.toDataURL("image/png");
  }

  async drawPicture(dataURL) {
    const image = new Image();
    image.src = dataURL;
    await image.decode();
    this.clear();
    const scale = Math.min(this.canvas.width / image.width, this.canvas.height / image.height);
    const w = image.width * scale;
    const h = image.height * scale;
    this.ctx.imageSmoothingEnabled = image.width > 64; // keep a 28x28 picture crisp
    this.ctx.drawImage(image, (this.canvas.width - w) / 2, (this.canvas.height - h) / 2, w, h);
    this.blank = false;
  }
}
