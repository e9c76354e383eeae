// Small DOM helpers: build elements without innerHTML (every text from the service is escaped).

/**
 * h("div.card#x", {attributes, on: {click}}, ...children): children are nodes, strings or arrays.
 */
export function h(tag, props = {}, ...children) {
  const [name, ...rest] = tag.split(/(?=[.#])/);
  const el = document.createElement(name || "div");
  for (const part of rest) {
    if (part[0] === ".") el.classList.add(part.slice(1));
    else el.id = part.slice(1);
  }
  if (props === null || typeof props !== "object" || props instanceof Node || Array.isArray(props)) {
    children.unshift(props);
    props = {};
  }
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "on") {
      for (const [event, handler] of Object.entries(value)) el.addEventListener(event, handler);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "style" && typeof value === "object") {
      Object.assign(el.style, value);
    } else if (key in el && typeof value !== "string") {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? "" : value);
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

export function debounce(fn, ms) {
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

export function percent(p, digits = 1) {
  return `${(100 * p).toFixed(digits)}%`;
}

/** A number in a readable form: 0.9959 -> "0.9959", 123456 -> "123,456", 1.2e-5 -> "1.2e-5". */
export function formatNumber(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return String(value);
  if (Number.isInteger(value)) return value.toLocaleString("en");
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(2);
  return value.toPrecision(4).replace(/\.?0+$/, "");
}

/** A segmented radio control; calls onChange(value) when the choice changes. */
export function segmented(container, name, options, selected, onChange) {
  clear(container);
  for (const { value, label } of options) {
    const id = `${name}-${value}`.replace(/[^A-Za-z0-9_-]/g, "_");
    const input = h("input", {
      type: "radio",
      name,
      id,
      value,
      checked: value === selected,
      on: { change: () => onChange(value) },
    });
    container.append(input, h("label", { for: id }, label));
  }
}
