// Safe rendering of what role-players write: *actions* in italics, **bold**, `code`, ``` blocks ```, line breaks.
// Only DOM nodes and text nodes are made (never innerHTML), so card and model text can never become markup or
// script. The markers stay in the text (faded), so a message reads and copies exactly as it was written.
"use strict";

const INLINE = /(`[^`\n]+`|\*\*[^*\n]+?\*\*|\*[^*\n]+?\*)/g;

// An element with its properties set (textContent, never innerHTML); the page's one way to make nodes.
function node(tag, props) {
  return Object.assign(document.createElement(tag), props);
}

function marker(text) {
  return node("span", { className: "md", textContent: text });
}

function wrapped(tag, open, body, close) {
  const el = document.createElement(tag);
  el.append(marker(open), document.createTextNode(body), marker(close));
  return el;
}

function renderInline(parent, text) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) parent.append(document.createTextNode(text.slice(last, m.index)));
    const t = m[0];
    if (t.startsWith("`")) parent.append(wrapped("code", "`", t.slice(1, -1), "`"));
    else if (t.startsWith("**")) parent.append(wrapped("strong", "**", t.slice(2, -2), "**"));
    else parent.append(wrapped("em", "*", t.slice(1, -1), "*"));
    last = m.index + t.length;
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
}

// Fills ``el`` with ``text`` rendered; an unclosed ``` (a reply still being written) is a code block so far.
function renderRich(el, text) {
  el.replaceChildren();
  text.split("```").forEach((part, i, parts) => {
    if (i % 2 === 0) { renderInline(el, part); return; }
    const pre = document.createElement("pre");
    const closed = i < parts.length - 1;
    pre.append(marker("```"), document.createTextNode(part));
    if (closed) pre.append(marker("```"));
    el.append(pre);
  });
}
