// The jobs this browser sent: one card each, newest first, followed until they end.
//
// The list lives in localStorage (api.saveJobs), so a reload finds every job again and
// goes on following the unfinished ones; a finished job's card shows its result.
import * as api from "./api.js";
import { setupCompare, showImages } from "./compare.js";
import { bytes, stem, words } from "./format.js";

const POLL_MS = 600;
const MAX_JOBS = 50; // beyond this the oldest drop off the list (and their inputs)
const FINAL = new Set(["success", "failed", "cancelled", "expired"]);
const STATUS_WORDS = {
  pending: "queued",
  processing: "upscaling",
  success: "done",
  failed: "failed",
  cancelled: "cancelled",
  expired: "gone",
};

let jobs = api.loadJobs(); // newest first
const views = new Map(); // job id -> {card, urls, loading, shown}
let pollTimer = null;
let tokenRefused = false;
let hooks = { list: null, empty: null, template: null, onRefused: () => {}, afterRemove: () => {} };

// list, empty (the "no jobs" note) and template are elements; onRefused(error) is told
// when the service refuses the token; afterRemove() runs when a card is removed
export function initJobs(options) {
  hooks = Object.assign(hooks, options);
  render();
  schedulePoll(0);
}

// a job the service just accepted
export function addJob(job) {
  jobs.unshift(job);
  store();
  render();
  schedulePoll(0);
  return views.get(job.id).card;
}

// the service took the (new) token: follow the jobs again, fetch results not fetched yet
export function refreshJobs() {
  tokenRefused = false;
  render();
  schedulePoll(0);
}

function store() {
  for (const old of jobs.slice(MAX_JOBS)) forget(old.id);
  jobs = jobs.slice(0, MAX_JOBS);
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
  hooks.empty.hidden = jobs.length > 0;
  let previous = null;
  for (const job of jobs) {
    let view = views.get(job.id);
    if (!view) {
      view = createCard(job);
      views.set(job.id, view);
    }
    // newest first, in the order of the list
    const place = previous ? previous.nextSibling : hooks.list.firstChild;
    if (place !== view.card) hooks.list.insertBefore(view.card, place);
    previous = view.card;
    update(job, view);
  }
}

function createCard(job) {
  const card = hooks.template.content.firstElementChild.cloneNode(true);
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
    hooks.afterRemove();
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
        hooks.onRefused(error);
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
