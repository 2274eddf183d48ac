// The page's side of the HTTP contract and what the browser keeps between visits.
//
// The token lives in localStorage and goes out as X-Token on every call; the jobs
// of this browser are a JSON list in localStorage; each job's input image is kept
// in IndexedDB (too large for localStorage) so the before/after view survives a
// reload. Nothing here touches the DOM.

const TOKEN_KEY = "srcluster-token";
const JOBS_KEY = "srcluster-jobs";
const OPTIONS_KEY = "srcluster-options";

export class ApiError extends Error {
  // status 0: no answer at all
  constructor(status, code, message, detail) {
    super(message);
    this.status = status;
    this.code = code;
    this.detail = detail || {};
  }
}

export function getToken() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

// fetch() with the token; a non-2xx reply becomes an ApiError carrying the service's words
export async function call(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  const token = getToken();
  if (token) headers["X-Token"] = token;
  let reply;
  try {
    reply = await fetch(path, Object.assign({}, options, { headers }));
  } catch (error) {
    throw new ApiError(0, "network", "The service does not answer (" + error.message + ").");
  }
  if (!reply.ok) {
    let body = null;
    try {
      body = await reply.json();
    } catch (error) {
      body = null; // not JSON: some proxy's page
    }
    if (body && typeof body.message === "string") {
      throw new ApiError(reply.status, body.code, body.message, body.detail);
    }
    throw new ApiError(reply.status, "http_" + reply.status, "HTTP " + reply.status + " " + reply.statusText);
  }
  return reply;
}

export async function serviceInfo() {
  return (await call("/")).json();
}

export async function submit(form) {
  return (await call("/sr", { method: "POST", body: form })).json();
}

export async function result(id) {
  return (await (await call("/result/" + id)).json()).result;
}

export async function cancel(id) {
  return (await (await call("/result/" + id, { method: "DELETE" })).json()).result;
}

// the bytes /result/<id>/download serves, and the name its Content-Disposition gives
export async function download(id) {
  const reply = await call("/result/" + id + "/download");
  const header = reply.headers.get("Content-Disposition") || "";
  const match = /filename="([^"]+)"/.exec(header);
  return { blob: await reply.blob(), filename: match ? match[1] : id };
}

function readJson(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key) || "null");
    return value === null ? fallback : value;
  } catch (error) {
    return fallback; // damaged by hand: start afresh
  }
}

export function loadJobs() {
  const jobs = readJson(JOBS_KEY, []);
  return Array.isArray(jobs) ? jobs.filter((job) => job && typeof job.id === "string") : [];
}

export function saveJobs(jobs) {
  localStorage.setItem(JOBS_KEY, JSON.stringify(jobs));
}

export function loadOptions() {
  return readJson(OPTIONS_KEY, {});
}

export function saveOptions(options) {
  localStorage.setItem(OPTIONS_KEY, JSON.stringify(options));
}

// --- input images, in IndexedDB (null where the browser refuses it, e.g. private mode) ---

let database = null;

function openDatabase() {
  if (database === null) {
    database = new Promise((resolve) => {
      try {
        const request = indexedDB.open("srcluster", 1);
        request.onupgradeneeded = () => request.result.createObjectStore("inputs");
        request.onsuccess = () => resolve(request.result);
        request.onerror = () => resolve(null);
      } catch (error) {
        resolve(null);
      }
    });
  }
  return database;
}

async function inputs(mode, work) {
  const db = await openDatabase();
  if (db === null) return null;
  return new Promise((resolve) => {
    try {
      const transaction = db.transaction("inputs", mode);
      const request = work(transaction.objectStore("inputs"));
      transaction.oncomplete = () => resolve(request.result === undefined ? null : request.result);
      transaction.onerror = () => resolve(null);
      transaction.onabort = () => resolve(null);
    } catch (error) {
      resolve(null); // the database went away (cleared by the user): the input is not kept
    }
  });
}

export function keepInput(id, blob) {
  return inputs("readwrite", (store) => store.put(blob, id));
}

export function loadInput(id) {
  return inputs("readonly", (store) => store.get(id));
}

export function dropInput(id) {
  return inputs("readwrite", (store) => store.delete(id));
}
