// The web chat page: pick chat, a character or a scene of several; stream replies, stop, reset, see and edit
// the memory; history lives in the bot's store. Replies are rendered by render.js (DOM nodes only, never innerHTML).
"use strict";

const TEXTS = {
  en: {
    talkTo: "Talk to", chat: "Chat", reset: "New conversation", send: "Send", stop: "Stop",
    placeholder: "Type a message", stopped: "Stopped.", failed: "Could not reach the bot. Please try again.",
    memory: "Memory", pin: "Pin", forget: "Forget", unpin: "Unpin", pinPlaceholder: "A fact to always remember",
    noSummary: "No summary yet: once the conversation is long, what scrolls out is summarised here.",
    covers: (n) => `Covers ${n} earlier message(s).`,
    scene: "Scene (several characters)", pickCast: "Pick the characters of the scene:", startScene: "Start the scene",
  },
  ko: {
    talkTo: "대화 상대", chat: "채팅", reset: "새 대화", send: "보내기", stop: "멈추기",
    placeholder: "메시지를 입력하세요", stopped: "멈췄어요.", failed: "봇에 연결할 수 없어요. 다시 시도해 주세요.",
    memory: "기억", pin: "고정", forget: "지우기", unpin: "고정 해제", pinPlaceholder: "항상 기억할 내용",
    noSummary: "아직 요약이 없어요. 대화가 길어지면 지난 내용이 여기에 요약돼요.",
    covers: (n) => `메시지 ${n}개를 요약했어요.`,
    scene: "장면 (여러 캐릭터)", pickCast: "장면에 함께할 캐릭터를 고르세요:", startScene: "장면 시작",
  },
};
const LANG = (navigator.languages && navigator.languages[0] || navigator.language || "en")
  .toLowerCase().startsWith("ko") ? "ko" : "en";
const T = TEXTS[LANG];

const $ = (id) => document.getElementById(id);
const log = $("log"), input = $("input"), targetSelect = $("target");
const state = { characters: new Map(), cast: new Map(), writing: null, controller: null };
const SCENE = "scene";

function sessionId() {
  let id = localStorage.getItem("llmbot.session");
  if (!id) {
    // getRandomValues works on plain http too (randomUUID needs a secure context).
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    id = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    localStorage.setItem("llmbot.session", id);
  }
  return id;
}
const SESSION = sessionId();

function translate() {
  document.documentElement.lang = LANG;
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = T[el.dataset.i18n]; });
  document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => {
    el.placeholder = T[el.dataset.i18nPlaceholder];
  });
  targetSelect.setAttribute("aria-label", T.talkTo);
}

function target() { return targetSelect.value || "chat"; }
function inScene() { return target() === SCENE; }

function avatar(src) {
  return node("img", { alt: "", src });
}

// A message; a scene's character message starts with its avatar and name. ``el.raw`` is the text as written.
function addMessage(role, text, extraClass, speaker) {
  const el = document.createElement("div");
  el.className = `msg ${role}` + (extraClass ? ` ${extraClass}` : "");
  if (speaker) {
    const who = document.createElement("div");
    who.className = "who";
    const image = state.cast.get(speaker);
    if (image) who.append(avatar(image));
    const name = document.createElement("span");
    name.textContent = speaker;
    who.append(name);
    el.append(who);
  }
  el.body = document.createElement("div");
  el.body.className = "body";
  el.append(el.body);
  setText(el, text);
  log.appendChild(el);
  log.scrollTop = log.scrollHeight;
  return el;
}

function setText(el, text) {
  el.raw = text;
  if (el.classList.contains("assistant")) renderRich(el.body, text);
  else el.body.textContent = text;            // never innerHTML: messages are untrusted text
}

function addNote(text) {
  const el = document.createElement("div");
  el.className = "note";
  el.textContent = text;
  log.appendChild(el);
  log.scrollTop = log.scrollHeight;
}

function setWriting(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  $("reset").disabled = on;
  targetSelect.disabled = on;
}

async function api(path, body) {
  const res = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  if (!res.ok) throw new Error(await errorText(res));
  return res.json();
}

async function errorText(res) {
  try { return (await res.json()).message || T.failed; } catch (e) { return T.failed; }
}

function showPersona() {
  $("scene").hidden = !inScene();
  const c = state.characters.get(target());
  $("persona").hidden = !c;
  if (!c) return;
  $("persona-name").textContent = c.name;
  $("avatar").hidden = !c.image;
  if (c.image) $("avatar").src = c.image;
}

async function loadHistory() {
  if (inScene()) return loadScene();
  const t = target();
  const data = await api(`/web/api/history?session=${SESSION}&target=${encodeURIComponent(t)}`);
  if (t !== target() || state.writing) return;     // switched again, or a reply started meanwhile
  log.replaceChildren();
  const c = state.characters.get(t);
  if (!data.messages.length && c && c.greeting) addMessage("assistant", c.greeting, "greeting");
  for (const m of data.messages) {
    addMessage(m.role, m.content);
    if (m.role === "assistant" && m.status === "cancelled") addNote(T.stopped);
  }
}

// The memory panel: the rolling summary and the pinned facts of the conversation shown.
function showMemory(data) {
  const summary = data.summary && data.summary.text.trim();
  const covers = data.summary && data.summary.covers && data.summary.covers.messages;
  $("memory-summary").textContent = summary ? summary + (covers ? `\n(${T.covers(covers)})` : "") : T.noSummary;
  const list = $("memory-pins");
  list.replaceChildren();
  for (const p of data.pins) {
    const li = document.createElement("li");
    const text = document.createElement("span");
    text.textContent = p.text;
    const unpin = document.createElement("button");
    unpin.type = "button";
    unpin.className = "unpin";
    unpin.textContent = "×";
    unpin.title = T.unpin;
    unpin.setAttribute("aria-label", `${T.unpin} ${p.n}`);
    unpin.addEventListener("click", () => memoryAction("unpin", { n: p.n }));
    li.append(text, unpin);
    list.appendChild(li);
  }
}

async function loadMemory() {
  if (!$("memory").open) return;
  const t = target();
  const data = await api(`/web/api/memory?session=${SESSION}&target=${encodeURIComponent(t)}`);
  if (t === target()) showMemory(data);
}

async function memoryAction(action, extra) {
  try {
    showMemory(await api(`/web/api/memory/${action}`, { session: SESSION, target: target(), ...extra }));
  } catch (e) {
    addNote(e.message);
  }
}

function showCast(characters) {
  state.cast = new Map(characters.map((c) => [c.name, c.image]));
  const cast = $("cast");
  cast.replaceChildren();
  for (const c of characters) {
    const item = document.createElement("span");
    if (c.image) item.append(avatar(c.image));
    const name = document.createElement("strong");
    name.textContent = c.name;
    item.append(name);
    cast.append(item);
  }
  $("scene-pick").hidden = characters.length > 0;
  $("send").disabled = characters.length === 0;
}

function showChoices() {
  const box = $("scene-choices");
  box.replaceChildren();
  for (const c of state.characters.values()) {
    const label = document.createElement("label");
    const check = document.createElement("input");
    check.type = "checkbox";
    check.value = c.name;
    label.append(check, document.createTextNode(" " + c.name));
    box.append(label);
  }
}

async function loadScene() {
  const data = await api(`/web/api/scene?session=${SESSION}`);
  if (!inScene() || state.writing) return;
  log.replaceChildren();
  showCast(data.characters);
  for (const m of data.messages) {
    addMessage(m.role, m.content, null, m.role === "assistant" ? m.speaker : null);
    if (m.role === "assistant" && m.status === "cancelled") addNote(T.stopped);
  }
}

async function startScene() {
  const names = [...document.querySelectorAll("#scene-choices input:checked")].map((c) => c.value);
  if (!names.length) return;
  const data = await api("/web/api/scene", { session: SESSION, characters: names });
  log.replaceChildren();
  showCast(data.characters);
  for (const m of data.messages) addMessage(m.role, m.content, "greeting", m.speaker);
}

async function loadCharacters() {
  const data = await api("/web/api/characters");
  for (const c of data.characters) {
    state.characters.set(c.target, c);
    const opt = document.createElement("option");
    opt.value = c.target;
    opt.textContent = c.name;
    targetSelect.appendChild(opt);
  }
  const saved = localStorage.getItem("llmbot.target");
  if (saved && [...targetSelect.options].some((o) => o.value === saved)) targetSelect.value = saved;
}

// Reads OpenAI-style server-sent events: {"choices":[{"delta":{"content":…}}]}, {"error":…}, [DONE].
// A delta with a ``name`` opens the next speaker's message (a scene).
async function readEvents(res, onText, onSpeaker) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", error = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return error;
        const obj = JSON.parse(data);
        if (obj.error) { error = obj.error; continue; }
        const delta = obj.choices && obj.choices[0] && obj.choices[0].delta;
        if (delta && delta.name && onSpeaker) onSpeaker(delta.name);
        if (delta && delta.content) onText(delta.content);
      }
    }
  }
  return error;
}

async function send(text) {
  addMessage("user", text);
  const scene = inScene();
  let out = scene ? null : addMessage("assistant", "", "writing");
  state.writing = out || true;
  state.controller = new AbortController();
  setWriting(true);
  const firstReply = !log.querySelector(".msg.assistant:not(.greeting):not(.writing)");
  const drop = () => { if (out && !out.raw) out.remove(); };
  try {
    const res = await fetch(scene ? "/web/api/scene/chat" : "/web/api/chat", {
      method: "POST", headers: { "Content-Type": "application/json" }, signal: state.controller.signal,
      body: JSON.stringify(scene ? { session: SESSION, text } : { session: SESSION, target: target(), text }),
    });
    if (!res.ok) {
      drop();
      addNote(await errorText(res));
      return;
    }
    const error = await readEvents(res, (piece) => {
      setText(out, out.raw + piece);
      log.scrollTop = log.scrollHeight;
    }, (speaker) => {
      if (out) out.classList.remove("writing");
      out = addMessage("assistant", "", "writing", speaker);
    });
    if (error) {
      drop();
      addNote(error.code === "cancelled" ? T.stopped : error.message);
    }
  } catch (e) {
    drop();
    addNote(e.name === "AbortError" ? T.stopped : T.failed);
  } finally {
    if (out) out.classList.remove("writing");
    state.writing = null;
    state.controller = null;
    setWriting(false);
    input.focus();
  }
  // A new roleplay stores the greeting the engine chose: show exactly what was stored.
  if (firstReply && state.characters.has(target())) loadHistory().catch(() => {});
  loadMemory().catch(() => {});
}

async function stop() {
  const controller = state.controller;
  try {
    await api("/web/api/stop", { session: SESSION });
  } catch (e) { /* the abort below still ends it */ }
  // The stream ends by itself once the bot has stopped; abort only if it does not.
  setTimeout(() => { if (controller && state.controller === controller) controller.abort(); }, 3000);
}

async function reset() {
  // Nothing is lost: the old conversation stays stored, so no confirmation is asked.
  if (inScene()) await api("/web/api/scene/end", { session: SESSION });
  else await api("/web/api/reset", { session: SESSION, target: target() });
  await loadHistory();
  await loadMemory();
}

function autosize() {
  input.style.height = "auto";
  input.style.height = `${input.scrollHeight}px`;
}

function wire() {
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text || state.writing || $("send").disabled) return;
    input.value = "";
    autosize();
    send(text);
  });
  input.addEventListener("keydown", (e) => {
    // Enter sends, Shift+Enter breaks the line; never while an IME (Korean input) is composing.
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  input.addEventListener("input", autosize);
  $("stop").addEventListener("click", stop);
  $("scene-pick").addEventListener("submit", (e) => {
    e.preventDefault();
    startScene().catch((err) => addNote(err.message));
  });
  $("reset").addEventListener("click", () => reset().catch((e) => addNote(e.message)));
  targetSelect.addEventListener("change", () => {
    localStorage.setItem("llmbot.target", target());
    $("send").disabled = false;
    showPersona();
    loadHistory().catch((e) => addNote(e.message));
    loadMemory().catch((e) => addNote(e.message));
  });
  $("memory").addEventListener("toggle", () => loadMemory().catch((e) => addNote(e.message)));
  $("pin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("pin-input").value.trim();
    if (!text) return;
    $("pin-input").value = "";
    memoryAction("pin", { text });
  });
  $("forget").addEventListener("click", () => memoryAction("forget", {}));
}

async function main() {
  translate();
  wire();
  $("send").disabled = true;         // until the history is shown, so a first message is not wiped by it
  try {
    await loadCharacters();
    showChoices();
  } catch (e) {
    addNote(e.message);
  }
  showPersona();
  try {
    await loadHistory();
  } catch (e) {
    addNote(e.message);
  }
  if (!inScene()) $("send").disabled = false;
  document.body.dataset.ready = "1";
  input.focus();
}

main();
