// Image generation: every ready generator of a dataset draws the chosen class (or every class)
// with the same seed; diffusion models also take steps, guidance and the sampler.

import { postJSON } from "./api.js";
import { $, clear, h, segmented } from "./dom.js";
import { datasetTitle, groupByDataset, modelDetails } from "./models.js";

const ALL = "all";

export function setupGenerate(models, classify) {
  const groups = groupByDataset(models.filter((m) => m.task === "image-generation" && m.ready));
  const results = $("#gen-results");
  const form = $("#generate-form");
  const labelSelect = $("#gen-label");
  if (!groups.size) {
    clear(results, h("p.empty", "No image generator is ready."));
    $("#generate-button").disabled = true;
    return;
  }
  let dataset = groups.keys().next().value;
  let configs = new Map(); // model id -> config.json

  async function chooseDataset(value) {
    dataset = value;
    const members = groups.get(dataset);
    const details = await Promise.all(members.map((m) => modelDetails(m.id).catch(() => null)));
    configs = new Map(members.map((m, i) => [m.id, (details[i] && details[i].config) || {}]));
    const labels = [...configs.values()].find((c) => (c.labels || []).length)?.labels || [];
    const previous = labelSelect.value;
    clear(
      labelSelect,
      labels.map((name, i) => h("option", { value: String(i) }, name)),
      h("option", { value: ALL }, "Every class"),
    );
    if ([...labelSelect.options].some((o) => o.value === previous)) labelSelect.value = previous;
    const diffusion = [...configs.values()].find((c) => generationOf(c).kind === "diffusion");
    const defaults = diffusion ? generationOf(diffusion).defaults || {} : {};
    if (!form.dataset.touched) {
      if (defaults.steps) $("#gen-steps").value = defaults.steps;
      if (defaults.guidance !== undefined) $("#gen-guidance").value = defaults.guidance;
      if (defaults.sampler) $("#gen-sampler").value = defaults.sampler;
    }
    for (const id of ["#gen-steps", "#gen-guidance", "#gen-sampler"]) $(id).disabled = !diffusion;
    renderCards();
  }

  function renderCards() {
    clear(
      results,
      groups.get(dataset).map((m) => {
        const kind = generationOf(configs.get(m.id)).kind || "generator";
        return h(
          "article.result.generator",
          { dataset: { model: m.id } },
          h("header", h("h3", m.id), h("span.tag", `${m.family || kind}`)),
          h(
            "div.gallery",
            { role: "list", "aria-label": `Images from ${m.id}` },
            [0, 1, 2, 3].map(() => h("div.tile.placeholder", { "aria-hidden": "true" })),
          ),
          h("p.meta", "Press “Generate”."),
        );
      }),
    );
  }

  form.addEventListener("input", () => (form.dataset.touched = "yes"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("#generate-button");
    button.disabled = true;
    try {
      await Promise.all(groups.get(dataset).map((m) => generateInto(m)));
    } finally {
      button.disabled = false;
    }
  });
  $("#gen-reseed").addEventListener("click", () => {
    $("#gen-seed").value = Math.floor(Math.random() * 2 ** 31);
    form.requestSubmit();
  });

  async function generateInto(model) {
    const card = results.querySelector(`[data-model="${CSS.escape(model.id)}"]`);
    const gallery = card.querySelector(".gallery");
    const meta = card.querySelector(".meta");
    const config = configs.get(model.id) || {};
    const generation = generationOf(config);
    const body = { model: model.id, response_format: "b64_json" };
    const seed = $("#gen-seed").value.trim();
    if (seed !== "") body.seed = Number(seed);
    if (labelSelect.value === ALL) {
      body.labels = (config.labels || []).map((_, i) => i);
    } else {
      body.label = Number(labelSelect.value);
      body.n = Math.max(1, Number($("#gen-n").value) || 1);
    }
    if (generation.kind === "diffusion") {
      body.steps = Number($("#gen-steps").value) || undefined;
      body.guidance = Number($("#gen-guidance").value);
      body.sampler = $("#gen-sampler").value;
    }
    card.classList.add("busy");
    card.dataset.state = "running";
    clear(meta, "Generating…");
    const started = performance.now();
    try {
      const answer = await postJSON("/v1/images/generations", body);
      const seconds = (performance.now() - started) / 1000;
      clear(
        gallery,
        answer.data.map((item, i) => {
          const url = `data:image/png;base64,${item.b64_json}`;
          const label = item.revised_prompt || answer.labels?.[i] || "";
          return h(
            "figure.tile",
            { role: "listitem" },
            h(
              "button.tile-button",
              {
                type: "button",
                title: `Classify this ${label}`,
                on: { click: () => classify.show(url, model.dataset) },
              },
              h("img", { src: url, alt: `${label}, generated by ${model.id}`, width: 84, height: 84 }),
            ),
            h("figcaption", label),
          );
        }),
      );
      const settings = generation.kind === "diffusion" ? ` · ${body.steps} ${body.sampler} steps, guidance ${body.guidance}` : "";
      clear(meta, `seed ${answer.seed}${settings} · ${seconds.toFixed(2)} s`);
      card.dataset.state = "done";
    } catch (error) {
      clear(meta, h("span.error", error.message));
      card.dataset.state = "error";
    } finally {
      card.classList.remove("busy");
    }
  }

  segmented(
    $("#generate-datasets"),
    "generate-dataset",
    [...groups.keys()].map((d) => ({ value: d, label: datasetTitle(d) })),
    dataset,
    chooseDataset,
  );
  return chooseDataset(dataset);
}

function generationOf(config) {
  return (config && config.generation) || {};
}
