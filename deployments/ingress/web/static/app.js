/*
 * vlgraph's browser page (docs/web-page.md is the contract with the browser tests).
 *
 * Five panels, one per tool: captioning, questions with uploads, generation,
 * similar image and embeddings. Plain ES2020, no framework, no external request;
 * every URL is relative so the page also works under a route prefix.
 *
 * When the service asks for an API key (a 401), the key panel asks the person for one; the
 * key is kept in sessionStorage (this tab only, never localStorage, a cookie or a URL) and
 * sent by request() as `Authorization: Bearer KEY` to this page's own origin only.
 *
 * Layout of this file: small DOM and HTTP helpers, then one block per panel, then start-up.
 */
"use strict";

// Filled at start-up from GET api/models (the server's model registry): name -> model.
const served = new Map();

const state = {
  captionFiles: [], // the caption selection: files chosen with the input and dropped
  imageId: null, // the image questions are about
  questionsServed: true,
  historyItems: new Map(), // image_id -> the last history page's item
  similarUrl: null, // object URL of the similar panel's original
  storedImages: new Map(), // image_id -> object URL of a stored image fetched with the key
  searchFile: null, // an image dropped on the search panel (one chosen is in its input)
  searchCursor: null, // next_cursor of the last search page
};

/** Where the API key lives: this tab's sessionStorage, under this name. */
const KEY_STORAGE = "vlgraph-api-key";

const KEY_MESSAGES = {
  needed: "This service needs an API key. Enter it to continue; it is kept for this tab only.",
  refused: "The API key was refused: it may be wrong, revoked or rotated. Enter a current key.",
};

/** The model menus and the buttons that need the served models. */
const MODEL_MENUS = ["caption-model", "generate-model", "similar-model"];
const TOOL_BUTTONS = [
  "caption-submit", "upload-submit", "generate-submit", "similar-submit", "embed-submit",
  "search-submit",
];

/* ---------- DOM helpers ---------- */

const $ = (id) => document.getElementById(id);

/** A new element with a class and text content. */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

/** A `<p>` with a bold label and a value element of the given class. */
function labelled(label, className, text) {
  const line = el("p");
  line.append(el("span", "label", `${label}: `), el("span", className, text));
  return line;
}

function showImage(img, src) {
  img.src = src;
  img.hidden = false;
}

function hideImage(img) {
  img.removeAttribute("src");
  img.hidden = true;
}

/* ---------- Errors ---------- */

/** The server answered an error; `message` is already in plain words. `status` and `code`
 * (the body's error.code) are set when the error came from an answer. */
class ApiError extends Error {
  constructor(message, status = 0, code = "") {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The request never got an answer. */
class NetworkError extends Error {}

function setError(id, prefix, error) {
  const message = error instanceof NetworkError
    ? `The server did not answer: ${error.message}`
    : `${prefix}: ${error.message || error}`;
  $(id).textContent = message;
}

function clearError(id) {
  $(id).textContent = "";
}

/** The rate limiter's refusals (429), as opposed to a full queue's. */
const RATE_LIMIT_CODES = new Set(["rate_limited", "too_many_in_flight"]);

/** Seconds to wait from a Retry-After header (seconds or an HTTP date); null without one. */
function retryAfterSeconds(response) {
  const value = (response.headers.get("Retry-After") || "").trim();
  if (!value) return null;
  if (/^\d+$/.test(value)) return Math.max(1, Number(value));
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(1, Math.ceil((date - Date.now()) / 1000));
}

/** The server's own words for a non-2xx response: error.message, detail, the status. */
function serverMessage(response, body) {
  if (body && body.error && typeof body.error.message === "string") return body.error.message;
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) {
    const messages = body.detail.map((item) => item && item.msg).filter(Boolean);
    if (messages.length) return messages.join("; ");
  }
  const status = response.statusText || "the request was refused";
  return `${status} (HTTP ${response.status})`;
}

/** The plain-words error of a non-2xx response; 401 and 429 say what to do. */
async function responseError(response, sentKey) {
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  const code = body && body.error && typeof body.error.code === "string" ? body.error.code : "";
  let message = serverMessage(response, body);
  if (response.status === 401) {
    message = "Not authorized: this service needs a valid API key (enter it above).";
  } else if (response.status === 429 && (RATE_LIMIT_CODES.has(code) || !code)) {
    const seconds = retryAfterSeconds(response);
    const whose = sentKey ? "for this key" : "from this address";
    if (seconds !== null) {
      message = `Too many requests ${whose}: try again in ${seconds} second${seconds === 1 ? "" : "s"}.`;
    }
  }
  return new ApiError(message, response.status, code);
}

/* ---------- HTTP ---------- */

/** Whether `url` is on this page's origin (the only one the API key is ever sent to). */
function sameOrigin(url) {
  try {
    return new URL(url, document.baseURI).origin === window.location.origin;
  } catch (_) {
    return false;
  }
}

/**
 * fetch that turns a failed connection into a NetworkError and a non-2xx into an ApiError.
 * With a stored API key it adds `Authorization: Bearer KEY` (same origin only); a 401 opens
 * the key panel.
 */
async function request(url, options = {}) {
  const key = storedKey();
  const headers = new Headers(options.headers || {});
  const sentKey = Boolean(key) && sameOrigin(url);
  if (sentKey) headers.set("Authorization", `Bearer ${key}`);
  let response;
  try {
    response = await fetch(url, { ...options, headers });
  } catch (error) {
    throw new NetworkError(error.message || String(error));
  }
  if (!response.ok) {
    const error = await responseError(response, sentKey);
    if (response.status === 401) keyRefused(error.code, sentKey ? key : "");
    throw error;
  }
  return response;
}

async function requestJson(url, options = {}) {
  const response = await request(url, options);
  try {
    return await response.json();
  } catch (_) {
    throw new ApiError("the server sent an answer the page could not read");
  }
}

function postJson(url, body) {
  return requestJson(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body),
  });
}

/** One server-sent event block: its `event:` name and its JSON `data:`. */
function parseEventBlock(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (!data.length) return null;
  try {
    return { name, data: JSON.parse(data.join("\n")) };
  } catch (_) {
    throw new ApiError(`the server sent an event the page could not read (${name})`);
  }
}

/** POST, then hand each server-sent event to onEvent(name, data) as it arrives. */
async function streamEvents(url, options, onEvent) {
  const response = await request(url, { ...options, headers: { Accept: "text/event-stream", ...(options.headers || {}) } });
  if (!response.body) throw new ApiError("this browser cannot read a streamed answer");
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  const drain = (final) => {
    buffer = buffer.replace(/\r\n/g, "\n");
    let end = buffer.indexOf("\n\n");
    while (end !== -1) {
      const event = parseEventBlock(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (event) onEvent(event.name, event.data);
      end = buffer.indexOf("\n\n");
    }
    if (final && buffer.trim()) {
      const event = parseEventBlock(buffer);
      buffer = "";
      if (event) onEvent(event.name, event.data);
    }
  };
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (error) {
      throw new NetworkError(error.message || String(error));
    }
    if (chunk.done) break;
    buffer += decoder.decode(chunk.value, { stream: true });
    drain(false);
  }
  buffer += decoder.decode();
  drain(true);
}

/** A whole number from a number input, undefined when empty; throws on anything else. */
function integerField(id, name) {
  const input = $(id);
  if (input.validity && input.validity.badInput) throw new ApiError(`${name} must be a whole number`);
  const text = input.value.trim();
  if (text === "") return undefined;
  const value = Number(text);
  if (!Number.isInteger(value)) throw new ApiError(`${name} must be a whole number`);
  return value;
}

/** Base64 of a file's bytes, without the `data:...;base64,` prefix. */
function fileBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => {
      const url = String(reader.result);
      resolve(url.slice(url.indexOf(",") + 1));
    };
    reader.onerror = () => reject(new ApiError(`could not read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

function pluralImages(count) {
  return `${count} image${count === 1 ? "" : "s"}`;
}

/* ---------- Tabs ---------- */

function tabButtons() {
  return Array.from(document.querySelectorAll("nav [data-tab]"));
}

function showTab(tab) {
  for (const button of tabButtons()) {
    const selected = button.dataset.tab === tab;
    button.setAttribute("aria-selected", String(selected));
    button.tabIndex = selected ? 0 : -1;
    $(`${button.dataset.tab}-panel`).hidden = !selected;
  }
  if (tab === "questions") refreshHistory();
}

function setUpTabs() {
  const buttons = tabButtons();
  buttons.forEach((button, index) => {
    button.addEventListener("click", () => showTab(button.dataset.tab));
    button.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      const next = buttons[(index + step + buttons.length) % buttons.length];
      next.focus();
      showTab(next.dataset.tab);
    });
  });
}

/* ---------- Start-up: health, served models ---------- */

/** The served models that can do `capability`, in the registry's order. */
function able(capability) {
  return Array.from(served.values()).filter((model) => model.capabilities.includes(capability));
}

/** Fill a menu with `models`, selecting `preferred` when it is among them. */
function fillMenu(select, models, preferred) {
  select.replaceChildren(...models.map((model) => {
    const option = el("option", "", model.label);
    option.value = model.name;
    return option;
  }));
  if (models.some((model) => model.name === preferred)) select.value = preferred;
}

/** Undo what applyModels and lockTools did, before the served models are applied again. */
function resetModels() {
  served.clear();
  for (const note of document.querySelectorAll(".not-served")) note.remove();
  state.questionsServed = true;
  for (const id of MODEL_MENUS) $(id).disabled = false;
  for (const id of TOOL_BUTTONS) $(id).disabled = false;
  updateQuestionButton();
}

/** No model list (the service wants a key): empty, disabled menus and buttons. */
function lockTools() {
  served.clear();
  for (const id of MODEL_MENUS) {
    $(id).replaceChildren();
    $(id).disabled = true;
  }
  for (const id of TOOL_BUTTONS) $(id).disabled = true;
  $("question-submit").disabled = true;
  updateCollective();
}

function markNotServed(panelId, text, buttonIds) {
  const panel = $(panelId);
  const note = el("p", "not-served", text);
  panel.querySelector("h2").after(note);
  for (const id of buttonIds) $(id).disabled = true;
}

function applyModels(models, catalog, similarGenerator, search) {
  resetModels();
  for (const model of catalog) served.set(model.name, model);
  const random = catalog.filter((model) => model.random_weights).map((model) => model.label);
  $("offline-random").textContent = random.length
    ? `Random weights, so noise: ${random.join(", ")}.`
    : "";
  const has = (name) => models.includes(name);
  const captioners = able("caption");
  fillMenu($("caption-model"), captioners, "blip");
  if (!captioners.length) {
    markNotServed("caption-panel", "No captioning model is served by this profile.", ["caption-submit"]);
  }
  updateCollective();

  if (!has("vqa") || !has("blip")) {
    state.questionsServed = false;
    const missing = ["blip", "vqa"].filter((name) => !has(name)).join(" and ");
    markNotServed("questions-panel", `Questions are not served by this profile (no ${missing}).`,
      ["upload-submit", "question-submit"]);
  }

  const generators = able("generate");
  fillMenu($("generate-model"), generators, "sd");
  if (!generators.length) {
    markNotServed("generate-panel", "No image generator is served by this profile.", ["generate-submit"]);
  }

  // The pipeline draws with one generator: the only one its route takes.
  const chained = generators.filter((model) => model.name === similarGenerator);
  fillMenu($("similar-model"), chained, similarGenerator);
  if (!has("similar_image") || !chained.length) {
    markNotServed("similar-panel", "Similar images are not served by this profile.", ["similar-submit"]);
  }

  if (!has("clip_text") && !has("clip_image")) {
    markNotServed("embed-panel", "No CLIP encoder is served by this profile.", ["embed-submit"]);
  }

  if (!search) {
    markNotServed("search-panel", "Search is not served by this profile.", ["search-submit"]);
  }
}

function showHealth(health) {
  const status = $("service-status");
  const unreachable = Object.entries(health.reachable || {})
    .filter(([, reachable]) => !reachable)
    .map(([name]) => name);
  let text = `${health.status} · profile ${health.profile}`;
  if (unreachable.length) text += ` · unreachable: ${unreachable.join(", ")}`;
  status.textContent = text;
  status.className = `service-status ${health.status === "healthy" ? "healthy" : "degraded"}`;
  $("offline-notice").hidden = health.random_weights !== true && health.offline_world !== true;
}

/** The status line (GET ., open to all), then the model menus (GET api/models, which may
 * need the API key: on a 401 the key panel asks for it and the tools wait). */
async function loadHealth() {
  try {
    const health = await requestJson(".", { headers: { Accept: "application/json" } });
    showHealth(health);
    const catalog = await requestJson("api/models");
    applyModels(
      Array.isArray(health.models) ? health.models : [],
      catalog.models || [],
      catalog.similar_image_generator || null,
      catalog.search === true,
    );
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      lockTools();
      return;
    }
    const status = $("service-status");
    status.className = "service-status down";
    status.textContent = error instanceof NetworkError
      ? `The server did not answer: ${error.message}`
      : `Health check failed: ${error.message}`;
  }
}

/* ---------- API key ---------- */

/** The API key kept for this tab; "" when none (or when the browser keeps no storage). */
function storedKey() {
  try {
    return window.sessionStorage.getItem(KEY_STORAGE) || "";
  } catch (_) {
    return "";
  }
}

function showForgetButton() {
  $("api-key-forget").hidden = !storedKey();
}

/** Show the key panel with the message for `reason` ("needed" or "refused"). */
function askForKey(reason) {
  const panel = $("api-key-panel");
  const opening = panel.hidden;
  $("api-key-message").textContent = KEY_MESSAGES[reason];
  $("api-key-message").classList.toggle("refused", reason === "refused");
  panel.hidden = false;
  if (opening) $("api-key-input").focus();
}

/** A request answered 401: a key that was refused is dropped, and the panel asks again. */
function keyRefused(code, sentKey) {
  if (sentKey && sentKey === storedKey()) {
    try {
      window.sessionStorage.removeItem(KEY_STORAGE);
    } catch (_) {
      // nothing stored, nothing to drop
    }
  }
  showForgetButton();
  askForKey(code === "missing_key" ? "needed" : "refused");
}

function clearErrors() {
  for (const line of document.querySelectorAll(".panel-error")) line.textContent = "";
}

/** Keep the key for this tab and do again what the page did at load. */
function submitKey() {
  const input = $("api-key-input");
  const key = input.value.trim();
  const message = $("api-key-message");
  if (!key) {
    message.textContent = "Enter the API key first.";
    input.focus();
    return;
  }
  if (!/^[\x21-\x7e]+$/.test(key)) {
    message.textContent = "An API key has no spaces or accented letters: paste it as it was given.";
    input.focus();
    return;
  }
  try {
    window.sessionStorage.setItem(KEY_STORAGE, key);
  } catch (_) {
    message.textContent = "This browser keeps nothing for this tab (storage is off), so the key cannot be used.";
    return;
  }
  input.value = "";
  $("api-key-panel").hidden = true;
  showForgetButton();
  clearErrors();
  loadHealth();
}

/** Drop the key; the page asks again at the next request that needs one. */
function forgetKey() {
  try {
    window.sessionStorage.removeItem(KEY_STORAGE);
  } catch (_) {
    // nothing stored
  }
  for (const url of state.storedImages.values()) URL.revokeObjectURL(url);
  state.storedImages.clear();
  showForgetButton();
  loadHealth();
}

function setUpKey() {
  $("api-key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submitKey();
  });
  $("api-key-forget").addEventListener("click", forgetKey);
  showForgetButton();
}

/* ---------- 1. Caption ---------- */

function updateCollective() {
  const box = $("caption-collective");
  const allowed = able("collective").some((model) => model.name === $("caption-model").value);
  box.disabled = !allowed;
  if (!allowed) box.checked = false;
}

function renderSelection() {
  const list = $("caption-selected");
  list.replaceChildren(...state.captionFiles.map((file) => el("li", "", file.name)));
}

function addCaptionFiles(files) {
  state.captionFiles.push(...Array.from(files || []));
  renderSelection();
}

function setUpDropZone() {
  const zone = $("caption-drop");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget || !zone.contains(event.relatedTarget)) zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (event.dataTransfer) addCaptionFiles(event.dataTransfer.files);
  });
}

function captionUrl(collective) {
  const params = new URLSearchParams({ model: $("caption-model").value });
  const prompt = $("caption-prompt").value.trim();
  const flag = $("flag-prompt").value.trim();
  if (prompt) params.set("caption_prompt", prompt);
  if (flag) params.set("flag_caption_prompt", flag);
  const path = collective ? "api/caption-collective-images" : "api/caption-images";
  return `${path}?${params}`;
}

function flaggedText(flagged) {
  return flagged ? "flagged" : "not flagged";
}

function renderCaptionItem(item) {
  const card = el("article", "caption-result");
  card.append(el("p", "filename", item.filename));
  if (item.error) {
    const error = el("p", "error", item.error.message || "this image got no caption");
    card.append(error);
    return card;
  }
  card.append(
    labelled("Caption", "caption", item.caption || ""),
    labelled("Tags", "tags", (item.tags || []).join(", ")),
    el("p", `flagged${item.flagged ? " is-flagged" : ""}`, flaggedText(item.flagged)),
    el("p", "cache", item.cache ? "from cache" : "computed"),
  );
  return card;
}

function renderCollective(answer) {
  const box = $("collective-result");
  box.replaceChildren(
    el("p", "count", `One caption for ${pluralImages(answer.count)}`),
    labelled("Caption", "caption", answer.collective_caption),
    labelled("Tags", "tags", (answer.tags || []).join(", ")),
    el("p", `flagged${answer.flagged ? " is-flagged" : ""}`, flaggedText(answer.flagged)),
  );
  box.hidden = false;
}

async function submitCaption() {
  clearError("caption-error");
  const files = state.captionFiles.slice();
  if (!files.length) {
    setError("caption-error", "Captioning failed", new ApiError("choose or drop at least one image"));
    return;
  }
  const collective = $("caption-collective").checked && !$("caption-collective").disabled;
  const form = new FormData();
  for (const file of files) form.append("images", file, file.name);
  const button = $("caption-submit");
  const progress = $("caption-progress-text");
  button.disabled = true;
  progress.textContent = `Captioning ${pluralImages(files.length)}…`;
  $("caption-results").replaceChildren();
  $("collective-result").hidden = true;
  $("collective-result").replaceChildren();
  try {
    const answer = await requestJson(captionUrl(collective), { method: "POST", body: form });
    if (collective) renderCollective(answer);
    else $("caption-results").replaceChildren(...answer.results.map(renderCaptionItem));
    progress.textContent = "";
  } catch (error) {
    progress.textContent = "";
    setError("caption-error", "Captioning failed", error);
  } finally {
    button.disabled = false;
  }
}

function setUpCaption() {
  $("caption-model").addEventListener("change", updateCollective);
  $("caption-files").addEventListener("change", (event) => addCaptionFiles(event.target.files));
  $("caption-clear").addEventListener("click", () => {
    state.captionFiles = [];
    $("caption-files").value = "";
    renderSelection();
  });
  $("caption-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submitCaption();
  });
  setUpDropZone();
  updateCollective();
}

/* ---------- 2. Questions ---------- */

function qaItem(record) {
  const item = el("li", "qa");
  item.append(el("span", "question", record.question), el("span", "answer", record.answer));
  return item;
}

function renderQuestionHistory(records) {
  $("question-history").replaceChildren(...(records || []).map(qaItem));
}

function updateQuestionButton() {
  $("question-submit").disabled = !(state.questionsServed && state.imageId);
}

/** Make `imageId` the image questions are about. */
function chooseImage(imageId, src, caption, questions) {
  state.imageId = imageId;
  showImage($("upload-preview"), src);
  $("upload-caption").textContent = caption || "";
  $("answer").textContent = "";
  renderQuestionHistory(questions);
  for (const item of document.querySelectorAll("#history-list .history-item")) {
    item.classList.toggle("selected", item.dataset.imageId === imageId);
  }
  updateQuestionButton();
}

/** The src of a stored image: its relative URL, or, when an API key is kept (an <img> cannot
 * send it), an object URL of the bytes fetched with the key. */
async function storedImageSrc(imageId) {
  const path = `images/${encodeURIComponent(imageId)}`;
  if (!storedKey()) return path;
  if (state.storedImages.has(imageId)) return state.storedImages.get(imageId);
  const response = await request(path, { headers: { Accept: "image/*" } });
  const url = URL.createObjectURL(await response.blob());
  state.storedImages.set(imageId, url);
  return url;
}

function historyItem(item) {
  const li = el("li", "history-item");
  li.dataset.imageId = item.image_id;
  li.tabIndex = 0;
  li.classList.toggle("selected", item.image_id === state.imageId);
  const img = el("img");
  if (storedKey()) {
    storedImageSrc(item.image_id).then((src) => { img.src = src; }).catch(() => {});
  } else {
    img.src = `images/${encodeURIComponent(item.image_id)}`;
  }
  img.alt = item.filename ? `Stored image ${item.filename}` : "Stored image";
  img.loading = "lazy";
  const text = el("div", "history-text");
  const questions = el("ol", "qa-list");
  questions.append(...(item.questions || []).map(qaItem));
  text.append(el("p", "caption", item.caption), questions);
  li.append(img, text);
  const choose = () => chooseImage(item.image_id, img.src, item.caption, item.questions);
  li.addEventListener("click", choose);
  li.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      choose();
    }
  });
  return li;
}

async function refreshHistory() {
  try {
    const page = await requestJson("history?limit=20", { headers: { Accept: "application/json" } });
    const items = page.items || [];
    state.historyItems = new Map(items.map((item) => [item.image_id, item]));
    $("history-list").replaceChildren(...items.map(historyItem));
    $("history-empty").hidden = items.length > 0;
  } catch (error) {
    setError("questions-error", "Loading the history failed", error);
  }
}

async function submitUpload() {
  clearError("questions-error");
  const file = $("upload-file").files[0];
  if (!file) {
    setError("questions-error", "Upload failed", new ApiError("choose an image first"));
    return;
  }
  const form = new FormData();
  form.append("image", file, file.name);
  const button = $("upload-submit");
  button.disabled = true;
  $("questions-progress-text").textContent = "Uploading and captioning…";
  try {
    const answer = await requestJson("upload", { method: "POST", body: form });
    const src = answer.image
      ? `data:${answer.media_type};base64,${answer.image}`
      : await storedImageSrc(answer.image_id);
    chooseImage(answer.image_id, src, answer.caption, []);
    refreshHistory();
  } catch (error) {
    setError("questions-error", "Upload failed", error);
  } finally {
    $("questions-progress-text").textContent = "";
    button.disabled = !state.questionsServed;
  }
}

async function submitQuestion() {
  clearError("questions-error");
  const question = $("question-input").value.trim();
  if (!state.imageId) {
    setError("questions-error", "Question failed", new ApiError("upload or choose an image first"));
    return;
  }
  if (!question) {
    setError("questions-error", "Question failed", new ApiError("write a question first"));
    return;
  }
  const button = $("question-submit");
  button.disabled = true;
  $("questions-progress-text").textContent = "Thinking…";
  try {
    const answer = await postJson("question", { image_id: state.imageId, question });
    $("answer").textContent = answer.answer;
    renderQuestionHistory(answer.history);
    refreshHistory();
  } catch (error) {
    setError("questions-error", "Question failed", error);
  } finally {
    $("questions-progress-text").textContent = "";
    updateQuestionButton();
  }
}

function setUpQuestions() {
  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submitUpload();
  });
  $("question-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submitQuestion();
  });
  $("history-refresh").addEventListener("click", () => {
    clearError("questions-error");
    refreshHistory();
  });
  updateQuestionButton();
}

/* ---------- Progress and generated images (generate and similar panels) ---------- */

function resetProgress(prefix) {
  const bar = $(`${prefix}-progress`);
  bar.max = 1;
  bar.value = 0;
  $(`${prefix}-progress-text`).textContent = "Starting…";
}

function showStep(prefix, data) {
  const bar = $(`${prefix}-progress`);
  bar.max = Math.max(1, data.total_steps);
  bar.value = data.step;
  $(`${prefix}-progress-text`).textContent = `step ${data.step} of ${data.total_steps}`;
}

function finishProgress(prefix) {
  const bar = $(`${prefix}-progress`);
  bar.value = bar.max;
  const text = $(`${prefix}-progress-text`);
  if (!text.textContent.startsWith("step")) text.textContent = "done";
}

function generatedDetails(image) {
  return `seed ${image.seed} · ${image.width}x${image.height} · ${image.num_inference_steps} steps`;
}

/* ---------- 3. Generate ---------- */

function generateBody() {
  const body = { description: $("generate-prompt").value, model: $("generate-model").value };
  const numbers = [
    ["width", "generate-width", "width"],
    ["height", "generate-height", "height"],
    ["num_inference_steps", "generate-steps", "steps"],
    ["seed", "generate-seed", "seed"],
  ];
  for (const [key, id, name] of numbers) {
    const value = integerField(id, name);
    if (value !== undefined) body[key] = value;
  }
  return body;
}

async function submitGenerate() {
  clearError("generate-error");
  const button = $("generate-submit");
  button.disabled = true;
  resetProgress("generate");
  hideImage($("generate-image"));
  $("generate-details").textContent = "";
  let gotImage = false;
  let failed = false;
  const onEvent = (name, data) => {
    if (name === "step") showStep("generate", data);
    else if (name === "image") {
      gotImage = true;
      showImage($("generate-image"), `data:image/png;base64,${data.image}`);
      $("generate-details").textContent = generatedDetails(data);
      finishProgress("generate");
    } else if (name === "error") {
      failed = true;
      setError("generate-error", "Generation failed", new ApiError(data.error && data.error.message));
    }
  };
  try {
    const body = generateBody();
    const options = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    await streamEvents("generate/stream", options, onEvent);
    if (!gotImage && !failed) throw new ApiError("the answer ended before an image arrived");
  } catch (error) {
    setError("generate-error", "Generation failed", error);
    failed = true;
  } finally {
    if (failed) $("generate-progress-text").textContent = "";
    button.disabled = false;
  }
}

function setUpGenerate() {
  $("generate-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submitGenerate();
  });
}

/* ---------- 4. Similar image ---------- */

function showOriginal() {
  const file = $("similar-file").files[0];
  if (state.similarUrl) URL.revokeObjectURL(state.similarUrl);
  state.similarUrl = file ? URL.createObjectURL(file) : null;
  if (state.similarUrl) showImage($("similar-original"), state.similarUrl);
  else hideImage($("similar-original"));
}

async function submitSimilar() {
  clearError("similar-error");
  const file = $("similar-file").files[0];
  if (!file) {
    setError("similar-error", "Similar image failed", new ApiError("choose an image first"));
    return;
  }
  if (!state.similarUrl) showOriginal();
  const button = $("similar-submit");
  button.disabled = true;
  resetProgress("similar");
  $("similar-caption").textContent = "";
  hideImage($("similar-generated"));
  let gotImage = false;
  let failed = false;
  const onEvent = (name, data) => {
    if (name === "caption") $("similar-caption").textContent = data.caption;
    else if (name === "step") showStep("similar", data);
    else if (name === "image") {
      gotImage = true;
      if (data.caption) $("similar-caption").textContent = data.caption;
      showImage($("similar-generated"), `data:image/png;base64,${data.generated.image}`);
      finishProgress("similar");
    } else if (name === "error") {
      failed = true;
      setError("similar-error", "Similar image failed", new ApiError(data.error && data.error.message));
    }
  };
  try {
    const form = new FormData();
    form.append("image", file, file.name);
    form.append("model", $("similar-model").value);
    const steps = integerField("similar-steps", "steps");
    if (steps !== undefined) form.append("num_inference_steps", String(steps));
    await streamEvents("api/similar-image/stream", { method: "POST", body: form }, onEvent);
    if (!gotImage && !failed) throw new ApiError("the answer ended before an image arrived");
  } catch (error) {
    setError("similar-error", "Similar image failed", error);
    failed = true;
  } finally {
    if (failed) $("similar-progress-text").textContent = "";
    button.disabled = false;
  }
}

function setUpSimilar() {
  $("similar-file").addEventListener("change", showOriginal);
  $("similar-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submitSimilar();
  });
}

/* ---------- 5. Embeddings ---------- */

/** Encode side "a" or "b": its image when one is chosen, else its text; null when empty. */
async function encodeSide(side) {
  const file = $(`embed-${side}-file`).files[0];
  if (file) {
    return postJson("encode_image", { image_b64: await fileBase64(file), normalize: true });
  }
  const text = $(`embed-${side}-text`).value;
  if (!text.trim()) return null;
  return postJson("encode_text", { text, normalize: true });
}

function vectorText(answer) {
  const vector = answer.embedding || [];
  const shown = vector.slice(0, 8).map((value) => value.toFixed(4));
  if (vector.length > 8) shown.push("...");
  const count = answer.dimension || vector.length;
  return `${count} numbers (${answer.model}): [${shown.join(", ")}]`;
}

function cosine(a, b) {
  let dot = 0;
  let normA = 0;
  let normB = 0;
  for (let i = 0; i < a.length; i += 1) {
    dot += a[i] * b[i];
    normA += a[i] * a[i];
    normB += b[i] * b[i];
  }
  if (normA === 0 || normB === 0) return NaN;
  return dot / (Math.sqrt(normA) * Math.sqrt(normB));
}

function cosineText(a, b) {
  if (a.length !== b.length) {
    return `cosine similarity: not comparable (${a.length} and ${b.length} numbers)`;
  }
  const value = cosine(a, b);
  return Number.isNaN(value) ? "cosine similarity: undefined (a zero vector)" : `cosine similarity: ${value.toFixed(4)}`;
}

/** Encode one side and show its vector; the error names the side. */
async function encodeAndShow(side) {
  try {
    const answer = await encodeSide(side);
    if (answer) $(`embed-${side}-vector`).textContent = vectorText(answer);
    return answer;
  } catch (error) {
    error.message = `${error.message} (input ${side.toUpperCase()})`;
    throw error;
  }
}

async function submitEmbed() {
  clearError("embed-error");
  for (const id of ["embed-a-vector", "embed-b-vector", "embed-cosine"]) $(id).textContent = "";
  const button = $("embed-submit");
  button.disabled = true;
  $("embed-progress-text").textContent = "Encoding…";
  try {
    const [a, b] = await Promise.all([encodeAndShow("a"), encodeAndShow("b")]);
    if (!a && !b) throw new ApiError("write a text or choose an image for A or B");
    if (a && b) $("embed-cosine").textContent = cosineText(a.embedding || [], b.embedding || []);
  } catch (error) {
    setError("embed-error", "Embedding failed", error);
  } finally {
    $("embed-progress-text").textContent = "";
    button.disabled = false;
  }
}

function setUpEmbed() {
  $("embed-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submitEmbed();
  });
}

/* ---------- Search: stored images by text, image, or both ---------- */

function searchFile() {
  return state.searchFile || $("search-file").files[0] || null;
}

function showSearchFile() {
  const file = searchFile();
  $("search-chosen").textContent = file ? `Image: ${file.name}` : "";
}

function searchResult(result) {
  const li = el("li", "search-result");
  li.dataset.imageId = result.image_id;
  li.tabIndex = 0;
  const img = el("img");
  img.alt = result.caption ? `Stored image: ${result.caption}` : "Stored image";
  img.loading = "lazy";
  const thumbnail = `images/${encodeURIComponent(result.image_id)}/thumbnail`;
  if (storedKey()) {
    request(thumbnail, { headers: { Accept: "image/*" } })
      .then((response) => response.blob())
      .then((blob) => { img.src = URL.createObjectURL(blob); })
      .catch(() => {});
  } else {
    img.src = thumbnail;
  }
  li.append(
    img,
    el("p", "score", `score ${result.score.toFixed(3)}`),
    el("p", "caption", result.caption || result.kind),
  );
  const ask = async () => {
    const known = state.historyItems.get(result.image_id);
    showTab("questions");
    chooseImage(result.image_id, await storedImageSrc(result.image_id), result.caption,
      known ? known.questions : []);
  };
  li.addEventListener("click", ask);
  li.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      ask();
    }
  });
  return li;
}

async function runSearch(more) {
  clearError("search-error");
  const text = $("search-text").value.trim();
  const file = searchFile();
  if (!more && !text && !file) {
    setError("search-error", "Search failed", new ApiError("write a description or choose an image"));
    return;
  }
  const form = new FormData();
  if (text) form.append("text", text);
  if (file) form.append("image", file, file.name);
  if (more && state.searchCursor) form.append("cursor", state.searchCursor);
  const button = $("search-submit");
  button.disabled = true;
  $("search-progress-text").textContent = "Searching…";
  try {
    const page = await requestJson("api/search", { method: "POST", body: form });
    const items = (page.results || []).map(searchResult);
    if (more) $("search-results").append(...items);
    else $("search-results").replaceChildren(...items);
    state.searchCursor = page.next_cursor || null;
    $("search-more").hidden = !state.searchCursor;
    $("search-empty").hidden = more || items.length > 0;
  } catch (error) {
    setError("search-error", "Search failed", error);
  } finally {
    $("search-progress-text").textContent = "";
    button.disabled = false;
  }
}

function setUpSearch() {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    runSearch(false);
  });
  $("search-more").addEventListener("click", () => runSearch(true));
  $("search-file").addEventListener("change", () => {
    state.searchFile = null;
    showSearchFile();
  });
  $("search-clear").addEventListener("click", () => {
    state.searchFile = null;
    $("search-file").value = "";
    showSearchFile();
  });
  const zone = $("search-drop");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) {
      state.searchFile = file;
      showSearchFile();
    }
  });
}

/* ---------- Start-up ---------- */

function start() {
  setUpKey();
  setUpTabs();
  setUpCaption();
  setUpQuestions();
  setUpGenerate();
  setUpSimilar();
  setUpEmbed();
  setUpSearch();
  showTab("caption");
  loadHealth();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
