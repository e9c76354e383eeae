// The few Markdown constructs model cards use (headings, paragraphs, lists, tables, code blocks,
// `code`, **bold**, *italic*), rendered as DOM nodes: the text is never parsed as HTML.

import { h } from "./dom.js";

export function renderMarkdown(text) {
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (/^```/.test(line)) {
      const code = [];
      for (i++; i < lines.length && !/^```/.test(lines[i]); i++) code.push(lines[i]);
      out.push(h("pre", h("code", code.join("\n"))));
      i++;
    } else if (/^#{1,6}\s/.test(line)) {
      const level = Math.min(6, line.match(/^#+/)[0].length + 3); // h4.. inside a card
      out.push(h(`h${Math.min(level, 6)}`, inline(line.replace(/^#+\s*/, ""))));
      i++;
    } else if (/^\s*\|/.test(line)) {
      const rows = [];
      for (; i < lines.length && /^\s*\|/.test(lines[i]); i++) rows.push(cells(lines[i]));
      out.push(table(rows));
    } else if (/^\s*[-*]\s/.test(line)) {
      const items = [];
      for (; i < lines.length && /^\s*[-*]\s/.test(lines[i]); i++) items.push(lines[i].replace(/^\s*[-*]\s/, ""));
      out.push(h("ul", items.map((item) => h("li", inline(item)))));
    } else if (line.trim() === "") {
      i++;
    } else {
      const para = [];
      for (; i < lines.length && lines[i].trim() !== "" && !/^(#|```|\s*\||\s*[-*]\s)/.test(lines[i]); i++) para.push(lines[i]);
      out.push(h("p", inline(para.join(" "))));
    }
  }
  return out;
}

function cells(line) {
  return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
}

function table(rows) {
  const separator = rows.findIndex((r) => r.every((c) => /^:?-{2,}:?$/.test(c)));
  const head = separator > 0 ? rows.slice(0, separator) : [];
  const body = separator >= 0 ? rows.slice(separator + 1) : rows;
  return h(
    "div.table-scroll",
    h(
      "table.table",
      head.length ? h("thead", head.map((r) => h("tr", r.map((c) => h("th", { scope: "col" }, inline(c)))))) : null,
      h("tbody", body.map((r) => h("tr", r.map((c) => h("td", inline(c)))))),
    ),
  );
}

function inline(text) {
  const parts = [];
  const pattern = /`([^`]+)`|\*\*([^*]+)\*\*|\*([^*]+)\*|\[([^\]]+)\]\([^)]*\)/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    parts.push(text.slice(last, match.index));
    if (match[1] !== undefined) parts.push(h("code", match[1]));
    else if (match[2] !== undefined) parts.push(h("strong", match[2]));
    else if (match[3] !== undefined) parts.push(h("em", match[3]));
    else parts.push(match[4]); // links: their text only (a card should not send the reader away)
    last = match.index + match[0].length;
  }
  parts.push(text.slice(last));
  return parts;
}
