"""The browser page `onnx-explain serve` answers GET / with: one self-contained HTML file (no build step,
no external script or style, so it works offline).  It talks to the server's own KServe V1 endpoints:
:predict for the top classes of a dropped image, :explain (with "overlays": true) for its maps."""

from __future__ import annotations

import html
import json

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>onnx-explain: __TITLE__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
#drop { border: 2px dashed #888; border-radius: 8px; padding: 1.5rem; text-align: center; max-width: 28rem; }
#drop.over { background: #eef; }
#classes { list-style: none; padding: 0; max-width: 28rem; }
#classes li button { width: 100%; text-align: left; margin: 2px 0; padding: 4px 8px; border: 1px solid #ccc;
  background: linear-gradient(90deg, #cde var(--p), #fff var(--p)); cursor: pointer; }
#classes li button.chosen { border: 2px solid #225; font-weight: bold; }
#methods label { margin-right: 1rem; white-space: nowrap; }
#overlays { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; text-align: center; }
figure img { width: 224px; image-rendering: pixelated; border: 1px solid #ccc; }
#status.error { color: #a00; }
</style></head>
<body>
<h1>onnx-explain: <code>__TITLE__</code></h1>
<div id="drop"><p>Drop an image here, or <input type="file" id="file" accept="image/*"></p>
<img id="preview" alt="" style="max-width: 224px; display: none"></div>
<h2>Top classes</h2><p>Click a class to explain it.</p>
<ol id="classes"></ol>
<h2>Methods</h2><div id="methods"></div>
<p id="status" role="status"></p>
<div id="overlays"></div>
<script>
const CONFIG = __CONFIG__;
const base = "/v1/models/" + encodeURIComponent(CONFIG.name);
let image = null;
const status = document.getElementById("status");
const say = (text, error) => { status.textContent = text; status.className = error ? "error" : ""; };

for (const m of CONFIG.methods) {
  const label = document.createElement("label");
  const box = document.createElement("input");
  box.type = "checkbox"; box.value = m; box.checked = CONFIG.checked.includes(m); box.name = "method";
  label.append(box, " " + m);
  document.getElementById("methods").append(label);
}

async function post(verb, body) {
  const response = await fetch(base + ":" + verb, {method: "POST", headers: {"Content-Type": "application/json"},
                                                    body: JSON.stringify(body)});
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

async function load(file) {
  const url = await new Promise((done, fail) => {
    const reader = new FileReader(); reader.onload = () => done(reader.result); reader.onerror = fail;
    reader.readAsDataURL(file);
  });
  image = url.split(",")[1];
  const preview = document.getElementById("preview"); preview.src = url; preview.style.display = "";
  say("classifying ...");
  try {
    const prediction = (await post("predict", {instances: [{image: {b64: image}}]})).predictions[0];
    const list = document.getElementById("classes"); list.innerHTML = "";
    for (const c of prediction.top) {
      const item = document.createElement("li"), button = document.createElement("button");
      button.textContent = c.label + " " + (100 * c.probability).toFixed(1) + "%";
      button.dataset.class = c.class; button.dataset.label = c.label;
      button.style.setProperty("--p", (100 * c.probability).toFixed(1) + "%");
      button.onclick = () => explain(c.class);
      item.append(button); list.append(item);
    }
    await explain(prediction.top[0].class);
  } catch (e) { say(e.message, true); }
}

async function explain(target) {
  const methods = [...document.querySelectorAll("input[name=method]:checked")].map(b => b.value);
  if (!methods.length) { say("pick at least one method", true); return; }
  for (const b of document.querySelectorAll("#classes button")) b.classList.toggle("chosen", b.dataset.class == target);
  say("explaining ...");
  try {
    const found = (await post("explain", {instances: [{image: {b64: image}, target, methods}], overlays: true}))
      .explanations[0];
    const shown = document.getElementById("overlays"); shown.innerHTML = "";
    for (const [method, src] of Object.entries(found.overlays)) {
      const figure = document.createElement("figure"), img = document.createElement("img");
      img.src = src; img.alt = method; img.dataset.method = method;
      const link = document.createElement("a");
      link.href = src; link.download = found.label + "." + method + ".png"; link.textContent = method + " (download)";
      const caption = document.createElement("figcaption"); caption.append(link);
      figure.append(img, caption); shown.append(figure);
    }
    shown.dataset.target = found.target;
    say("explained " + found.label);
  } catch (e) { say(e.message, true); }
}

document.getElementById("file").onchange = e => e.target.files[0] && load(e.target.files[0]);
const drop = document.getElementById("drop");
drop.ondragover = e => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = e => { e.preventDefault(); drop.classList.remove("over");
                     if (e.dataTransfer.files[0]) load(e.dataTransfer.files[0]); };
</script></body></html>
"""

DEFAULT_CHECKED = ("gradcam", "saliency", "guided_backprop", "occlusion", "eigencam")


def page_html(name: str, service) -> str:
    """The page for a served model (its name and methods; a few cheap ones ticked)."""
    methods = list(service.methods)
    checked = [m for m in methods if m in DEFAULT_CHECKED] or methods[:1]
    config = json.dumps({"name": name, "methods": methods, "checked": checked}).replace("</", "<\\/")
    return _PAGE.replace("__TITLE__", html.escape(name)).replace("__CONFIG__", config)
