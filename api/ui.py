"""A one-page web client at ``/ui``: no external assets, the token stays in the browser.

The token is kept in ``localStorage`` and sent as ``X-Token`` by ``fetch``; the
download is fetched the same way and offered as a blob link, since a plain
link could not carry the header.
"""

CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' blob:; form-action 'self'; frame-ancestors 'none'"
)
"""The page's Content-Security-Policy: its own inline code, requests to this origin only."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>srcluster</title>
<style>
  body { font: 15px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.4rem; }
  label { display: block; margin: .8rem 0 .2rem; font-weight: 600; }
  input, select, button { font: inherit; padding: .3rem; }
  input[type=password], select { width: 100%; box-sizing: border-box; }
  button { margin-top: 1rem; padding: .4rem 1.2rem; }
  progress { width: 100%; }
  #status { margin-top: 1rem; white-space: pre-wrap; }
  .error { color: #b00020; }
  img { max-width: 100%; margin-top: 1rem; }
</style>
</head>
<body>
<h1>srcluster</h1>
<form id="form">
  <label for="token">Token</label>
  <input id="token" type="password" autocomplete="off" required>
  <label for="file">Image</label>
  <input id="file" name="file" type="file" accept="image/*" required>
  <label for="model">Model</label>
  <select id="model" name="model"><option value="">(paste a token to list models)</option></select>
  <label for="format">Output format</label>
  <select id="format" name="format">
    <option value="">same as input</option><option>png</option><option>jpg</option><option>webp</option>
  </select>
  <button type="submit">Upscale</button>
</form>
<progress id="bar" value="0" max="1" hidden></progress>
<div id="status"></div>
<div id="out"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const token = $("token");
token.value = localStorage.getItem("srcluster-token") || "";

function say(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = Object.assign({"X-Token": token.value.trim()}, opts.headers || {});
  const reply = await fetch(path, opts);
  if (!reply.ok) {
    let message = reply.status + " " + reply.statusText;
    try { const body = await reply.json(); message = body.message + " (" + body.code + ")"; } catch (e) {}
    throw new Error(message);
  }
  return reply;
}

async function loadModels() {
  if (!token.value.trim()) return;
  localStorage.setItem("srcluster-token", token.value.trim());
  try {
    const info = await (await api("/")).json();
    const select = $("model");
    select.textContent = "";
    for (const name of info.models) {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      select.appendChild(option);
    }
    say("srcluster " + info.version + ", " + info.workers + " worker process(es) up");
  } catch (e) { say(e.message, true); }
}
token.addEventListener("change", loadModels);
loadModels();

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("out").textContent = "";
  const data = new FormData();
  data.append("file", $("file").files[0]);
  if ($("model").value) data.append("model", $("model").value);
  if ($("format").value) data.append("format", $("format").value);
  const bar = $("bar");
  try {
    say("uploading...");
    const submitted = await (await api("/sr", {method: "POST", body: data})).json();
    const id = submitted.task_id;
    bar.hidden = false;
    for (;;) {
      const job = (await (await api("/result/" + id)).json()).result;
      bar.max = Math.max(1, job.progress.total);
      bar.value = job.progress.done;
      say(job.status + ": " + job.progress.done + " of " + job.progress.total + " tiles");
      if (job.status === "success") break;
      if (job.status === "failed" || job.status === "cancelled") {
        throw new Error(job.status + (job.error ? ": " + job.error.message : ""));
      }
      await sleep(1000);
    }
    const reply = await api("/result/" + id + "/download");
    const blob = await reply.blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    const header = reply.headers.get("Content-Disposition") || "";
    const match = /filename="([^"]+)"/.exec(header);
    link.download = match ? match[1] : id;
    link.textContent = "Download " + link.download + " (" + blob.size + " bytes)";
    const img = document.createElement("img");
    img.src = link.href;
    img.alt = "result";
    $("out").append(link, img);
    say("done");
  } catch (e) {
    say(e.message, true);
  } finally {
    bar.hidden = true;
  }
});
</script>
</body>
</html>
"""
