// The drawing page. It draws, sends pictures to its own server (/predict), and shows the
// answer. It never transforms a picture: the 28x28 image shown is the one the served
// model made with its own transform and sent back.
"use strict";

const DEBOUNCE_MS = 15;          // after a stroke ends, wait this long for the next one
const WHILE_DRAWING_MS = 250;    // while a stroke goes on, ask at most this often
const CLIENT_TIMEOUT_MS = 20000; // until /model says how long the page's server waits
const KEEP_TIMEOUT_MS = 60000;   // keeping waits for a busy tracking store (SQLite: 20 s)
const RECHECK_MS = 5000;         // while the model is down, the line at the top looks again

const pad = document.getElementById("pad");
const context = pad.getContext("2d");
const penWidth = document.getElementById("pen-width");
const penWidthValue = document.getElementById("pen-width-value");
const dropZone = document.getElementById("drop-zone");
const fileInput = document.getElementById("file");
const answerElement = document.getElementById("answer");
const padAnswer = document.getElementById("pad-answer"); // the answer on the pad, on a phone
const probabilityElement = document.getElementById("probability");
const topList = document.getElementById("top");
const seen = document.getElementById("seen");
const curlElement = document.getElementById("curl");
const copyButton = document.getElementById("copy");
const errorElement = document.getElementById("error");
const noteElement = document.getElementById("note");
const timingElement = document.getElementById("timing");
const modelStatus = document.getElementById("model-status");
const feedbackElement = document.getElementById("feedback");
const rightButton = document.getElementById("right");
const classesElement = document.getElementById("classes");
const feedbackStatus = document.getElementById("feedback-status");
const resultElement = document.querySelector(".result");

let maxBytes = 8 * 1024 * 1024;
let clientTimeoutMs = CLIENT_TIMEOUT_MS;
let drawing = false;
let activePointer = null;  // the mouse, pen or finger that draws: a second finger does not
let last = null;
let hasInk = false;
let strokeStart = 0;
let strokeEnd = 0;         // performance.now() when the last stroke ended
let lastAsked = 0;
let debounceTimer = null;
let inFlight = false;
let inFlightController = null;
let pending = null;        // what to send once the request in flight is answered
let sequence = 0;          // one number per request; older answers never replace newer ones
let shownSequence = 0;
let fullCurl = "";
let classNames = [];       // the model's classes, when draw.py keeps feedback (--feedback)
let answered = null;       // { picture, className }: the picture whose answer is on screen
let padVersion = 0;        // one more each time the pad changes: feedback is for what it shows
let offeredVersion = -1;   // the pad version that the feedback buttons were offered for
let recheckTimer = null;

// For the tests and the benchmark: stroke-end-to-answer-on-screen times, in ms.
window.drawPage = { timings: [] };

function clearPad() {
  context.fillStyle = "#fff";
  context.fillRect(0, 0, pad.width, pad.height);
  hasInk = false;
}

function padPoint(event) {
  const box = pad.getBoundingClientRect();
  return {
    x: (event.clientX - box.left) * (pad.width / box.width),
    y: (event.clientY - box.top) * (pad.height / box.height),
  };
}

// A tap or a click without a move: a dot (a line from a point to itself draws nothing).
function dot(at) {
  context.fillStyle = "#000";
  context.beginPath();
  context.arc(at.x, at.y, Number(penWidth.value) / 2, 0, 2 * Math.PI);
  context.fill();
}

function line(from, to) {
  context.strokeStyle = "#000";
  context.lineWidth = Number(penWidth.value);
  context.lineCap = "round";
  context.lineJoin = "round";
  context.beginPath();
  context.moveTo(from.x, from.y);
  context.lineTo(to.x, to.y);
  context.stroke();
}

pad.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 || (drawing && event.pointerId !== activePointer)) return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  drawing = true;
  activePointer = event.pointerId;
  strokeStart = performance.now();
  last = padPoint(event);
  dot(last);
  hasInk = true;
  padChanged();
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing || event.pointerId !== activePointer) return;
  const points = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const point of points.length ? points : [event]) {
    const next = padPoint(point);
    line(last, next);
    last = next;
  }
  padVersion += 1;
  // The answer changes as one draws a long stroke, not only when the pen is lifted.
  const quiet = performance.now() - Math.max(strokeStart, lastAsked);
  if (quiet > WHILE_DRAWING_MS && !inFlight) askAboutPad(false);
});

function endStroke(event) {
  if (!drawing || event.pointerId !== activePointer) return;
  drawing = false;
  strokeEnd = performance.now();
  clearTimeout(debounceTimer);
  debounceTimer = setTimeout(() => askAboutPad(true), DEBOUNCE_MS);
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

penWidth.addEventListener("input", () => { penWidthValue.textContent = penWidth.value; });

document.getElementById("clear").addEventListener("click", () => {
  clearPad();
  pending = null;
  shownSequence = ++sequence; // answers still on their way are for a picture now gone
  showNothing();
  withdrawFeedback();
});

function askAboutPad(afterStroke) {
  if (!hasInk) return;
  lastAsked = performance.now();
  ask(padPicture(), afterStroke ? strokeEnd : 0, padVersion);
}

// The pad as a PNG, now. (canvas.toBlob may wait for the browser to be idle: a headless
// Chromium took a second.)
function padPicture() {
  const encoded = atob(pad.toDataURL("image/png").split(",")[1]);
  return new Blob([Uint8Array.from(encoded, (character) => character.charCodeAt(0))], { type: "image/png" });
}

// The answer on screen is for an older picture: no feedback on it until the new one's comes.
function padChanged() {
  padVersion += 1;
  answered = null;
  enableFeedback(false);
}

// Files: chosen, or dropped on the pad.
fileInput.addEventListener("change", () => {
  if (fileInput.files.length) useFile(fileInput.files[0]);
  fileInput.value = "";
});
for (const name of ["dragenter", "dragover"]) {
  dropZone.addEventListener(name, (event) => {
    event.preventDefault();
    dropZone.classList.add("dragging");
  });
}
for (const name of ["dragleave", "drop"]) {
  dropZone.addEventListener(name, () => dropZone.classList.remove("dragging"));
}
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  if (event.dataTransfer.files.length) useFile(event.dataTransfer.files[0]);
});

async function useFile(file) {
  if (!["image/png", "image/jpeg"].includes(file.type)) {
    showError(`${file.name} is not a PNG or JPEG picture.`);
    return;
  }
  if (file.size > maxBytes) {
    showError(`${file.name} is ${megabytes(file.size)}; this page accepts up to ${megabytes(maxBytes)}.`);
    return;
  }
  // Shown on the pad only so that one sees what was sent; the file itself is sent as it is.
  try {
    const bitmap = await createImageBitmap(file);
    clearPad();
    const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
    const width = bitmap.width * scale;
    const height = bitmap.height * scale;
    context.drawImage(bitmap, (pad.width - width) / 2, (pad.height - height) / 2, width, height);
    hasInk = true;
  } catch (error) {
    clearPad();
  }
  padChanged();
  ask(file, 0, padVersion);
}

// One request at a time; while one is in flight, only the newest picture waits. A
// finished stroke does not wait for the answer about a half-drawn one: that is dropped.
function ask(picture, stroke, version) {
  if (inFlight) {
    pending = { picture, stroke, version };
    if (stroke && inFlightController) inFlightController.abort();
    return;
  }
  inFlight = true;
  inFlightController = new AbortController();
  const number = ++sequence;
  send(picture, inFlightController.signal)
    .then((result) => {
      if (result.aborted) return;
      if (number > shownSequence) {
        shownSequence = number;
        if (result.ok) {
          showAnswer(result.answer, stroke);
          if (version === padVersion) offerFeedback(picture, result.answer.class_name, version);
        } else {
          showError(result.error);
          withdrawFeedback();
        }
      }
    })
    .finally(() => {
      inFlight = false;
      inFlightController = null;
      if (pending) {
        const next = pending;
        pending = null;
        ask(next.picture, next.stroke, next.version);
      }
    });
}

async function send(picture, dropped) {
  let response;
  try {
    response = await fetch("/predict", {
      method: "POST",
      body: picture,
      headers: { "Content-Type": picture.type || "application/octet-stream" },
      signal: AbortSignal.any([dropped, AbortSignal.timeout(clientTimeoutMs)]),
    });
  } catch (error) {
    if (dropped.aborted) return { ok: false, aborted: true };
    if (error.name === "TimeoutError") {
      return { ok: false, error: `No answer after ${clientTimeoutMs / 1000} s from this page's server.` };
    }
    return { ok: false, error: "This page's server is not answering: is draw.py still running?" };
  }
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null;
  }
  if (dropped.aborted) return { ok: false, aborted: true };
  if (response.ok && body && body.class_name !== undefined) return { ok: true, answer: body };
  const reason = body && body.error ? body.error : `HTTP ${response.status} from this page's server.`;
  return { ok: false, error: reason };
}

function showAnswer(answer, stroke) {
  // The model answers: if the line at the top still says it is down, ask again.
  if (modelStatus.classList.contains("down")) checkModel({ statusOnly: true });
  errorElement.hidden = true;
  resultElement.classList.remove("stale");
  answerElement.textContent = answer.class_name;
  answerElement.classList.toggle("long", answer.class_name.length > 3);
  answerElement.classList.remove("stale");
  padAnswer.textContent = `${answer.class_name} · ${percent(answer.probability)}`;
  padAnswer.classList.remove("stale");
  padAnswer.hidden = false;
  answerElement.dataset.seq = String(shownSequence);
  probabilityElement.textContent = `${percent(answer.probability)} sure`;
  topList.replaceChildren(...answer.top.map(barFor));
  drawSeen(answer.pixels);
  noteElement.hidden = !answer.note;
  noteElement.textContent = answer.note || "";
  fullCurl = answer.curl;
  curlElement.textContent = shortened(answer.curl);
  copyButton.disabled = false;
  copyButton.textContent = "Copy";
  const answered = answerElement.dataset.seq;
  // The answer is on screen at the next frame.
  requestAnimationFrame(() => {
    if (!stroke) {
      timingElement.textContent = `The model answered in ${answer.model_ms.toFixed(0)} ms.`;
      return;
    }
    const elapsed = performance.now() - stroke;
    window.drawPage.timings.push(elapsed);
    timingElement.dataset.seq = answered;
    timingElement.textContent =
      `${elapsed.toFixed(0)} ms from the end of the stroke to this answer ` +
      `(the model itself: ${answer.model_ms.toFixed(0)} ms).`;
  });
}

function barFor(entry) {
  const item = document.createElement("li");
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = entry.class_name;
  name.title = entry.class_name;
  const bar = document.createElement("span");
  bar.className = "bar";
  const fill = document.createElement("span");
  fill.className = "fill";
  fill.style.display = "block";
  fill.style.width = `${Math.max(0.5, entry.probability * 100).toFixed(1)}%`;
  bar.append(fill);
  const value = document.createElement("span");
  value.className = "percent";
  value.textContent = percent(entry.probability);
  item.append(name, bar, value);
  return item;
}

// Shows the model's 28x28 image (base64 of 784 grey bytes, white ink on black) as it is.
function drawSeen(encoded) {
  const seenContext = seen.getContext("2d");
  if (!encoded) {
    seenContext.clearRect(0, 0, 28, 28);
    return;
  }
  const grey = atob(encoded);
  const image = seenContext.createImageData(28, 28);
  for (let index = 0; index < grey.length && index < 784; index += 1) {
    const value = grey.charCodeAt(index);
    image.data.set([value, value, value, 255], index * 4);
  }
  seenContext.putImageData(image, 0, 0);
}

function showError(message) {
  if (!modelStatus.classList.contains("down")) checkModel({ statusOnly: true });
  errorElement.textContent = message;
  errorElement.hidden = false;
  answerElement.classList.add("stale");
  resultElement.classList.add("stale"); // the answer below is about an earlier picture
  padAnswer.classList.add("stale");
}

function showNothing() {
  errorElement.hidden = true;
  resultElement.classList.remove("stale");
  answerElement.textContent = "?";
  answerElement.classList.remove("long", "stale");
  padAnswer.hidden = true;
  probabilityElement.textContent = "Draw something to ask it.";
  topList.replaceChildren();
  drawSeen("");
  noteElement.hidden = true;
  curlElement.textContent = "Draw something first.";
  copyButton.disabled = true;
  fullCurl = "";
  timingElement.textContent = "";
}

// The picture's base64 is long: show its ends, copy all of it.
function shortened(command) {
  return command.replace(/"image": "([^"]{60,})"/, (match, encoded) =>
    `"image": "${encoded.slice(0, 24)}…${encoded.slice(-12)}"`);
}

copyButton.addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText(fullCurl);
    copyButton.textContent = "Copied";
  } catch (error) {
    curlElement.textContent = fullCurl;
    copyButton.textContent = "Select it above";
  }
});

// Feedback: "right", or "wrong, it is a ..." for each class. The picture goes to this page's
// server, which keeps it in MLflow with its label before it answers.
function setUpFeedback(names) {
  classNames = names;
  classesElement.replaceChildren(...names.map((name, label) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = name;
    button.setAttribute("aria-label", `Wrong, it is a ${name}`);
    button.addEventListener("click", () => sendFeedback(label));
    return button;
  }));
}

function offerFeedback(picture, className, version) {
  if (!classNames.length) return;
  answered = { picture, className };
  feedbackElement.hidden = false;
  if (version === offeredVersion) return; // the same drawing answered again: keep its line
  offeredVersion = version;
  enableFeedback(true);
  feedbackStatus.textContent = "";
}

function withdrawFeedback() {
  answered = null;
  feedbackElement.hidden = true;
}

function enableFeedback(enabled) {
  for (const button of feedbackElement.querySelectorAll("button")) button.disabled = !enabled;
}

rightButton.addEventListener("click", () => {
  if (answered) sendFeedback(classNames.indexOf(answered.className));
});

async function sendFeedback(label) {
  if (!answered) return;
  if (label < 0) {
    feedbackStatus.textContent = `${answered.className} is not a class of this page: start draw.py with the model's --dataset (fashion for a Fashion-MNIST model).`;
    return;
  }
  const { picture, className } = answered;
  const version = padVersion;
  enableFeedback(false); // until this answer is kept
  feedbackStatus.textContent = "Keeping it…";
  let said;
  try {
    const response = await fetch(`/feedback?label=${label}&answer=${encodeURIComponent(className)}`, {
      method: "POST",
      body: picture,
      headers: { "Content-Type": picture.type || "application/octet-stream" },
      signal: AbortSignal.timeout(KEEP_TIMEOUT_MS),
    });
    const body = await response.json().catch(() => null);
    said = (body && (body.message || body.error)) || `HTTP ${response.status} from this page's server.`;
    if (response.ok && version === padVersion) feedbackStatus.dataset.runId = body.run_id;
  } catch (error) {
    said = "This page's server is not answering: is draw.py still running?";
  }
  if (version !== padVersion) return; // the pad holds another drawing now: this is not its line
  feedbackStatus.textContent = said;
  // Again, or another label: the same picture counts once, with the label it was given last.
  enableFeedback(answered !== null);
}

function percent(probability) {
  const value = probability * 100;
  if (value > 0 && value < 0.1) return "<0.1%";
  return `${value >= 10 || value === 0 ? value.toFixed(0) : value.toFixed(1)}%`;
}

function megabytes(bytes) {
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

// The line at the top: whether the model answers. With statusOnly, only that line (again).
async function checkModel({ statusOnly = false } = {}) {
  try {
    const response = await fetch("/model", { signal: AbortSignal.timeout(CLIENT_TIMEOUT_MS) });
    const status = await response.json();
    if (!statusOnly) {
      maxBytes = status.max_bytes || maxBytes;
      if (status.timeout) clientTimeoutMs = (status.timeout + 10) * 1000;
      if (status.feedback) setUpFeedback(status.class_names);
    }
    modelStatus.textContent = status.message;
    modelStatus.classList.toggle("down", !status.ready);
  } catch (error) {
    modelStatus.textContent = "This page's server is not answering: is draw.py still running?";
    modelStatus.classList.add("down");
  }
  clearTimeout(recheckTimer);
  if (modelStatus.classList.contains("down")) {
    recheckTimer = setTimeout(() => checkModel({ statusOnly: true }), RECHECK_MS);
  }
}

clearPad();
checkModel();
