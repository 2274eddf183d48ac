// The page: choose an image and options, submit, follow each job's tiles, compare, download.
import * as api from "./api.js";
import { setupCompare, showImages } from "./compare.js";

const POLL_MS = 600;
const FINAL = new Set(["success", "failed", "cancelled", "expired"]);
const STATUS_WORDS = {
  pending: "queued",
  processing: "upscaling",
  success: "done",
  failed: "failed",
  cancelled: "cancelled",
  expired: "gone",
};

const $ = (id) => document.getElementById(id);
const form = $("form");
const tokenInput = $("token");
const fileInput = $("file");
const drop = $("drop");
const modelSelect = $("model");
const scaleSelect = $("scale");
const formatSelect = $("format");
const tileInput = $("tile");
const skipAlpha = $("skip-alpha");
const go = $("go");
const list = $("jobs");

let jobs = api.loadJobs(); // newest first
const views = new Map(); // job id -> {card, urls, loading, shown}
const modelScale = new Map(); // model name -> its own scale
let chosen = null; // {file, width, height} of the image to send
let previewUrl = null;
let busy = false; // a POST /sr is in flight
let lastSent = null; // what was last submitted, so the same job is not sent twice
let pollTimer = null;
let tokenRefused = false;

// --- small helpers ----------------------------------------------------------------

function say(text, isError = false) {
  const status = $("form-status");
  status.textContent = text;
  status.classList.toggle("error", isError);
  status.setAttribute("role", isError ? "alert" : "status");
}

function words(error) {
  if (!(error instanceof api.ApiError) || error.status === 0) return error.message;
  return error.message + " (" + error.code + ", HTTP " + error.status + ")";
}

function bytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KB";
  return (n / 1024 / 1024).toFixed(1) + " MB";
}

function stem(name) {
  const dot = name.lastIndexOf(".");
  return dot > 0 ? name.slice(0, dot) : name;
}

// --- the service: models and workers ----------------------------------------------

async function loadService() {
  if (!api.getToken()) {
    $("service").textContent = "enter a token to see the models and workers";
    return;
  }
  try {
    const info = await api.serviceInfo();
    tokenRefused = false;
    const details = info.model_details || info.models.map((name) => ({ name, description: "" }));
    const wanted = modelSelect.value || api.loadOptions().model || "";
    modelSelect.textContent = "";
    for (const model of details) {
      const option = new Option(model.name, model.name);
      option.dataset.description = model.description || "";
      modelSelect.append(option);
      if (model.scale) modelScale.set(model.name, model.scale);
    }
    if (details.some((model) => model.name === wanted)) modelSelect.value = wanted;
    describeModel();
    const workers = info.workers === 1 ? "1 worker process" : info.workers + " worker processes";
    $("service").textContent = "version " + info.version + ", " + workers + " up" +
      (info.workers === 0 ? ": jobs will wait until a worker starts" : "");
    schedulePoll(0);
  } catch (error) {
    $("service").textContent = "";
    say(words(error), true);
  }
}

function describeModel() {
  const option = modelSelect.selectedOptions[0];
  $("model-desc").textContent = option && option.dataset.description ? option.dataset.description : "";
  const own = modelScale.get(modelSelect.value);
  scaleSelect.options[0].textContent = own ? "default (×" + own + ")" : "default";
  describeChoice();
}

// --- choosing the image ----------------------------------------------------------

function choose(file) {
  if (!file) return;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  chosen = { file, width: 0, height: 0 };
  const img = $("preview-img");
  $("preview").hidden = false;
  $("preview-caption").textContent = file.name + ": reading…";
  img.hidden = false;
  img.onload = () => {
    if (chosen && chosen.file === file) {
      chosen.width = img.naturalWidth;
      chosen.height = img.naturalHeight;
    }
    describeChoice();
  };
  img.onerror = () => {
    img.hidden = true;
    $("preview-caption").textContent = file.name + ", " + bytes(file.size) +
      ": this browser cannot show it; the service will say whether it can read it.";
  };
  img.src = previewUrl;
  updateButton();
}

function describeChoice() {
  if (!chosen || !chosen.width) return;
  const { file, width, height } = chosen;
  const factor = Number(scaleSelect.value) || modelScale.get(modelSelect.value);
  let text = file.name + ": " + width + " × " + height + " px, " + bytes(file.size);
  if (factor) text += " → " + Math.round(width * factor) + " × " + Math.round(height * factor) + " px";
  $("preview-caption").textContent = text;
}

fileInput.addEventListener("change", () => choose(fileInput.files[0]));
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  choose(event.dataTransfer.files[0]);
});
// a file dropped beside the drop zone would otherwise replace the page
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());
window.addEventListener("paste", (event) => {
  const file = [...(event.clipboardData ? event.clipboardData.files : [])][0];
  if (file) choose(file);
});

// --- options and the Upscale button ---------------------------------------------

function options() {
  return {
    model: modelSelect.value,
    scale: scaleSelect.value,
    format: formatSelect.value,
    tile_size: tileInput.value.trim(),
    skip_alpha: skipAlpha.checked,
  };
}

function submission() {
  if (!chosen) return null;
  const { file } = chosen;
  return JSON.stringify([file.name, file.size, file.lastModified, options()]);
}

function updateButton() {
  const again = lastSent !== null && submission() === lastSent;
  go.disabled = busy || again;
  go.textContent = busy ? "Uploading…" : "Upscale";
  $("go-hint").textContent = again ? "Sent. Change the image or an option to send another job." : "";
}

for (const control of [modelSelect, scaleSelect, formatSelect, tileInput, skipAlpha]) {
  // both: some ways of changing a control (scripted selection, old browsers) send only one
  for (const type of ["input", "change"]) {
    control.addEventListener(type, () => {
      api.saveOptions(options());
      updateButton();
    });
  }
}
modelSelect.addEventListener("change", describeModel);
scaleSelect.addEventListener("change", describeChoice);

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (busy) return;
  if (!api.getToken()) {
    say("Enter a token first.", true);
    tokenInput.focus();
    return;
  }
  if (!chosen) {
    say("Choose an image first.", true);
    fileInput.focus();
    return;
  }
  const key = submission();
  if (key === lastSent) return;
  busy = true;
  updateButton();
  say("Uploading " + chosen.file.name + "…");
  const picked = options();
  const data = new FormData();
  data.append("file", chosen.file, chosen.file.name);
  for (const [name, value] of Object.entries(picked)) {
    if (name === "skip_alpha") {
      if (value) data.append(name, "true");
    } else if (value) {
      data.append(name, value);
    }
  }
  try {
    const reply = await api.submit(data);
    lastSent = key;
    const job = {
      id: reply.task_id,
      name: chosen.file.name,
      input: { width: chosen.width, height: chosen.height, size: chosen.file.size },
      options: picked,
      submitted: Date.now(),
      status: "pending",
      progress: { done: 0, total: 0 },
    };
    jobs.unshift(job);
    await api.keepInput(job.id, chosen.file);
    store();
    render();
    // one column (phones): the jobs are below the form, so bring the new one into sight
    if (window.matchMedia("(max-width: 59.99rem)").matches) views.get(job.id).card.scrollIntoView();
    say("Submitted " + job.name + ".");
    schedulePoll(0);
  } catch (error) {
    say(words(error), true);
  } finally {
    busy = false;
    updateButton();
  }
});

// --- jobs ----------------------------------------------------------------------

function store() {
  for (const old of jobs.slice(50)) forget(old.id);
  jobs = jobs.slice(0, 50);
  api.saveJobs(jobs);
}

function forget(id) {
  const view = views.get(id);
  if (view) {
    for (const url of view.urls) URL.revokeObjectURL(url);
    view.card.remove();
    views.delete(id);
  }
  api.dropInput(id);
}

function render() {
  $("no-jobs").hidden = jobs.length > 0;
  let previous = null;
  for (const job of jobs) {
    let view = views.get(job.id);
    if (!view) {
      view = createCard(job);
      views.set(job.id, view);
    }
    // newest first, in the order of the list
    const place = previous ? previous.nextSibling : list.firstChild;
    if (place !== view.card) list.insertBefore(view.card, place);
    previous = view.card;
    update(job, view);
  }
}

function createCard(job) {
  const card = $("job-template").content.firstElementChild.cloneNode(true);
  const view = { card, urls: [], loading: false, shown: false };
  card.dataset.id = job.id;
  card.querySelector(".job-name").textContent = job.name;
  const bits = [job.options.model || "default model"];
  if (job.options.scale) bits.push("×" + job.options.scale);
  if (job.options.format) bits.push(job.options.format.toUpperCase());
  if (job.options.tile_size) bits.push("tiles of " + job.options.tile_size + " px");
  if (job.options.skip_alpha) bits.push("alpha resized");
  if (job.input.width) bits.push("input " + job.input.width + " × " + job.input.height + " px");
  card.querySelector(".job-meta").textContent = bits.join(" · ");
  card.querySelector(".progress-text").id = "progress-" + job.id;
  card.querySelector(".bar").setAttribute("aria-labelledby", "progress-" + job.id);
  card.querySelector(".cancel").addEventListener("click", () => cancelJob(job, view));
  card.querySelector(".remove").addEventListener("click", () => {
    jobs = jobs.filter((other) => other.id !== job.id);
    forget(job.id);
    store();
    render();
    go.focus();
  });
  return view;
}

function update(job, view) {
  const { card } = view;
  const finished = FINAL.has(job.status);
  card.dataset.status = job.status;
  const badge = card.querySelector(".badge");
  badge.textContent = STATUS_WORDS[job.status] || job.status;
  badge.className = "badge " + job.status;

  const { done, total } = job.progress;
  const bar = card.querySelector(".bar");
  if (total > 0) {
    bar.max = total;
    bar.value = done;
  } else {
    bar.removeAttribute("value"); // indeterminate until the tile count is known
  }
  let text = total > 0 ? done + " of " + total + " tiles" : "waiting for the service";
  if (!finished && typeof job.eta === "number") text += ", about " + Math.ceil(job.eta) + " s left";
  card.querySelector(".progress-text").textContent = text;
  card.querySelector(".progress").hidden = job.status === "success";

  card.querySelector(".job-error").textContent = job.error || "";
  card.querySelector(".cancel").hidden = finished;
  card.querySelector(".remove").hidden = !finished;
  card.querySelector(".cancel").disabled = Boolean(job.cancelling);
  if (job.status === "success") showResult(job, view);
}

async function showResult(job, view) {
  if (view.shown || view.loading) return;
  view.loading = true;
  const { card } = view;
  const info = job.result || {};
  const width = info.width || job.input.width * 4;
  const height = info.height || job.input.height * 4;
  try {
    const [{ blob, filename }, input] = await Promise.all([api.download(job.id), api.loadInput(job.id)]);
    const afterUrl = URL.createObjectURL(blob);
    const beforeUrl = input ? URL.createObjectURL(input) : null;
    view.urls.push(afterUrl, ...(beforeUrl ? [beforeUrl] : []));
    const root = card.querySelector(".result");
    setupCompare(root, { name: job.name, width, height });
    showImages(root, { beforeUrl, afterUrl });
    root.querySelector(".after").onerror = () => {
      root.querySelector(".frame").hidden = true;
      root.querySelector(".compare-note").textContent = "This browser cannot show " +
        (info.format || "this format").toUpperCase() + " images; the download has them.";
    };
    root.querySelector(".compare-note").textContent = beforeUrl
      ? "Drag across the picture, or focus it and use the arrow keys, to move the divider."
      : "The input is not kept in this browser, so only the output is shown.";
    const ext = filename.includes(".") ? filename.slice(filename.lastIndexOf(".")) : "";
    const factor = job.options.scale || (job.input.width ? Math.round(width / job.input.width) : "");
    const link = root.querySelector(".download");
    link.href = afterUrl;
    link.download = stem(job.name) + (factor ? "_x" + factor : "") + ext;
    link.textContent = "Download " + link.download;
    const seconds = info.finished && info.created ? info.finished - info.created : null;
    let stats = width + " × " + height + " px, " + bytes(blob.size);
    if (seconds !== null) stats += ", in " + seconds.toFixed(1) + " s";
    if (info.started && info.created) stats += " (" + (info.started - info.created).toFixed(1) + " s queued)";
    root.querySelector(".stats").textContent = stats;
    root.hidden = false;
    view.shown = true;
  } catch (error) {
    card.querySelector(".job-error").textContent = "The result cannot be fetched: " + words(error);
  } finally {
    view.loading = false;
  }
}

async function cancelJob(job, view) {
  job.cancelling = true;
  update(job, view);
  try {
    absorb(job, await api.cancel(job.id));
  } catch (error) {
    job.error = "Cancel failed: " + words(error);
  }
  job.cancelling = false;
  store();
  update(job, view);
}

function absorb(job, reply) {
  job.status = reply.status;
  job.progress = reply.progress || job.progress;
  job.eta = reply.eta;
  job.error = reply.error ? reply.error.message + " (" + reply.error.code + ")" : null;
  if (reply.status === "success") job.result = reply;
}

// one job at a time, one round every POLL_MS, only while some job is unfinished
async function poll() {
  pollTimer = null;
  if (tokenRefused || !api.getToken()) return;
  let changed = false;
  for (const job of jobs.filter((candidate) => !FINAL.has(candidate.status))) {
    try {
      absorb(job, await api.result(job.id));
    } catch (error) {
      if (error.status === 401) {
        tokenRefused = true;
        say(words(error), true);
        break;
      }
      if (error.status === 404) {
        job.status = "expired";
        job.error = "The service no longer has this job (expired, deleted, or another token's).";
      } else {
        job.error = words(error); // passing trouble: try again next round
      }
    }
    changed = true;
    const view = views.get(job.id);
    if (view) update(job, view);
  }
  if (changed) store();
  if (jobs.some((job) => !FINAL.has(job.status))) schedulePoll(POLL_MS);
}

function schedulePoll(delay) {
  if (pollTimer === null) pollTimer = setTimeout(poll, delay);
}

// --- start -----------------------------------------------------------------------

tokenInput.value = api.getToken();
tokenInput.addEventListener("change", () => {
  api.setToken(tokenInput.value.trim());
  tokenRefused = false;
  say("");
  loadService();
  render(); // results that could not be fetched with the old token are tried again
});
$("forget").addEventListener("click", () => {
  api.setToken("");
  tokenInput.value = "";
  say("The token is forgotten by this browser.");
  tokenInput.focus();
});

const saved = api.loadOptions();
scaleSelect.value = saved.scale || "";
formatSelect.value = saved.format || "";
tileInput.value = saved.tile_size || "";
skipAlpha.checked = Boolean(saved.skip_alpha);
render();
loadService();
schedulePoll(0);
