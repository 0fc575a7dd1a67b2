// DOM helpers and a small Python highlighter. Everything a trajectory holds is
// written by a model and may be hostile: it only ever becomes text nodes
// (textContent, createTextNode), never markup: nothing here parses HTML.

export function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

export function add(parent, ...children) {
  for (const child of children) {
    if (child === null || child === undefined) continue;
    parent.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return parent;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

export function seconds(s) {
  if (typeof s !== "number" || !isFinite(s)) return "";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

export function count(n) {
  return typeof n === "number" ? n.toLocaleString("en-US") : String(n ?? "");
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1048576).toFixed(1)} MB`;
}

// -- highlighting ---------------------------------------------------------------
// A tokenizer for the Python a root model writes: keywords, built-ins, rlm's own
// functions, strings, numbers and comments become spans whose text is set with
// textContent. A regex pass, linear in practice; very long code stays plain.

const KEYWORDS = new Set(
  ("False None True and as assert async await break class continue def del elif else " +
    "except finally for from global if import in is lambda nonlocal not or pass raise " +
    "return try while with yield match case").split(" "),
);
const BUILTINS = new Set(
  ("print len range str int float list dict set tuple enumerate zip map filter sorted " +
    "sum min max any all isinstance type repr open abs round reversed json re").split(" "),
);
const RLM_NAMES = new Set(
  ("llm_query llm_batch llm_batch_iter rlm_query rlm_batch rlm_batch_iter FINAL FINAL_VAR " +
    "context answer history").split(" "),
);
const TOKEN = new RegExp(
  [
    String.raw`(#[^\n]*)`,
    String.raw`((?:[rRbBuUfF]{1,2})?(?:"""[\s\S]*?"""|'''[\s\S]*?'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'))`,
    String.raw`(\b\d[\d_]*(?:\.\d*)?(?:[eE][+-]?\d+)?j?\b)`,
    String.raw`([A-Za-z_][A-Za-z0-9_]*)`,
  ].join("|"),
  "g",
);
const MAX_HIGHLIGHT = 200000;

export function highlight(code) {
  const pre = el("pre", "code");
  if (code.length > MAX_HIGHLIGHT) {
    pre.textContent = code;
    return pre;
  }
  let last = 0;
  let previous = "";
  for (const match of code.matchAll(TOKEN)) {
    if (match.index > last) pre.appendChild(document.createTextNode(code.slice(last, match.index)));
    const [text, comment, string, number, name] = match;
    let cls = null;
    if (comment) cls = "tok-comment";
    else if (string) cls = "tok-string";
    else if (number) cls = "tok-number";
    else if (name) {
      if (KEYWORDS.has(name)) cls = "tok-keyword";
      else if (RLM_NAMES.has(name)) cls = "tok-rlm";
      else if (BUILTINS.has(name)) cls = "tok-builtin";
      else if (previous === "def" || previous === "class") cls = "tok-def";
      previous = name;
    }
    pre.appendChild(cls ? el("span", cls, text) : document.createTextNode(text));
    last = match.index + text.length;
  }
  if (last < code.length) pre.appendChild(document.createTextNode(code.slice(last)));
  return pre;
}

// -- folded text ----------------------------------------------------------------
// Long text shows its first lines; "show all" reveals the rest, fetching it first
// when the server sent only a preview (full = a function returning a promise).

const FOLD_LINES = 16;
const FOLD_CHARS = 1500;

export function folded(cls, text, { total = null, full = null, code = false, fold = FOLD_LINES } = {}) {
  const box = el("div", `folded ${cls}`);
  const whole = total === null;
  const lines = text.split("\n");
  const long = !whole || lines.length > fold + 2 || text.length > FOLD_CHARS;
  const render = (value) => (code ? highlight(value) : el("pre", "text", value));
  if (!long) return add(box, render(text));
  let head = lines.slice(0, fold).join("\n");
  if (head.length > FOLD_CHARS) head = head.slice(0, FOLD_CHARS);
  const size = whole ? text.length : total;
  const shown = render(head + "\n…");
  const button = el("button", "more", `show all (${count(size)} characters)`);
  button.type = "button";
  button.addEventListener("click", async () => {
    button.disabled = true;
    button.textContent = "loading…";
    try {
      const value = whole ? text : await full();
      box.replaceChild(render(value), shown);
      button.remove();
    } catch (err) {
      button.disabled = false;
      button.textContent = `could not load it (${err.message}); try again`;
    }
  });
  return add(box, shown, button);
}
