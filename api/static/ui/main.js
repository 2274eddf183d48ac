// The page: choose an image and options, submit, follow each job's tiles, compare, download.
import * as api from "./api.js";
import { bytes, words } from "./format.js";
import { addJob, initJobs, refreshJobs } from "./jobs.js";

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

const modelScale = new Map(); // model name -> its own scale
let chosen = null; // {file, width, height} of the image to send
let previewUrl = null;
let busy = false; // a POST /sr is in flight
let lastSent = null; // what was last submitted, so the same job is not sent twice

// --- small helpers ----------------------------------------------------------------

function say(text, isError = false) {
  const status = $("form-status");
  status.textContent = text;
  status.classList.toggle("error", isError);
  status.setAttribute("role", isError ? "alert" : "status");
}

// --- the service: models and workers ----------------------------------------------

async function loadService() {
  if (!api.getToken()) {
    $("service").textContent = "enter a token to see the models and workers";
    return;
  }
  try {
    const info = await api.serviceInfo();
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
    refreshJobs();
    const workers = info.workers === 1 ? "1 worker process" : info.workers + " worker processes";
    $("service").textContent = "version " + info.version + ", " + workers + " up" +
      (info.workers === 0 ? ": jobs will wait until a worker starts" : "");
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
    await api.keepInput(job.id, chosen.file);
    const card = addJob(job);
    // one column (phones): the jobs are below the form, so bring the new one into sight
    if (window.matchMedia("(max-width: 59.99rem)").matches) card.scrollIntoView();
    say("Submitted " + job.name + ".");
  } catch (error) {
    say(words(error), true);
  } finally {
    busy = false;
    updateButton();
  }
});

// --- start -----------------------------------------------------------------------

tokenInput.value = api.getToken();
tokenInput.addEventListener("change", () => {
  api.setToken(tokenInput.value.trim());
  say("");
  loadService(); // and, once the service takes the token, the jobs are followed again
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
initJobs({
  list: $("jobs"),
  empty: $("no-jobs"),
  template: $("job-template"),
  onRefused: (error) => say(words(error), true),
  afterRemove: () => go.focus(),
});
loadService();
