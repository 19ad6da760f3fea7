// The gallery's behaviour beyond plain links and forms: uploads (file, drop, paste),
// the Index button's progress, and the banner while search_service is unreachable.
"use strict";

// Registered before any <img> loads: a thumbnail the server cannot make shows the
// placeholder instead of a broken image.
document.addEventListener("error", (event) => {
  const img = event.target;
  if (img.tagName === "IMG" && !img.src.endsWith("/static/placeholder.svg")) {
    img.src = "/static/placeholder.svg";
  }
}, true);

document.addEventListener("DOMContentLoaded", () => {
  const body = document.body;
  const $ = (id) => document.getElementById(id);
  const message = (text) => { $("message").textContent = text || ""; };

  // --- search_service reachability --------------------------------------------------
  const banner = $("banner");
  async function checkHealth() {
    try {
      const reply = await fetch("/api/health", { cache: "no-store" });
      const answer = await reply.json();
      if (answer.ok) {
        if (body.dataset.down) { location.reload(); return; }  // rendered while down
        banner.hidden = true;
      } else {
        banner.textContent = answer.error;
        banner.hidden = false;
      }
    } catch (err) {
      banner.textContent = "the gallery itself cannot be reached; retrying";
      banner.hidden = false;
    }
  }
  setInterval(checkHealth, 2000);

  // --- tiles drawn from JSON (uploads) ----------------------------------------------
  function tile(match) {
    const figure = document.createElement("figure");
    figure.className = "tile";
    figure.title = [match.label, match.path].filter(Boolean).join(" · ") || match.id;
    const link = document.createElement("a");
    link.href = match.href;
    const img = document.createElement("img");
    img.alt = match.id;
    img.src = match.thumb;
    img.width = 160;
    img.height = 160;
    link.append(img);
    const caption = document.createElement("figcaption");
    const first = document.createElement("span");
    if (match.score !== null && match.score !== undefined) {
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = match.score.toFixed(3);
      first.append(score);
    }
    if (match.label) {
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = match.label;
      first.append(label);
    }
    const path = document.createElement("span");
    path.className = "path";
    path.textContent = match.name;
    caption.append(first, path);
    figure.append(link, caption);
    return figure;
  }

  // --- search by an outside image ---------------------------------------------------
  const maxBytes = Number(body.dataset.maxUploadMb) * 1024 * 1024;
  async function searchByImage(file, how) {
    message("");
    if (!file) return;
    if (file.size > maxBytes) {
      message(`the image is ${(file.size / 1e6).toFixed(1)} MB; at most ${body.dataset.maxUploadMb} MB (WEB_MAX_UPLOAD_MB) may be uploaded`);
      return;
    }
    const params = new URLSearchParams({ k: body.dataset.k, ns: body.dataset.ns,
      label: body.dataset.label, min_score: body.dataset.minScore });
    let reply;
    try {
      reply = await fetch(`/api/query-image?${params}`, { method: "POST", body: file,
        headers: { "Content-Type": file.type || "application/octet-stream" } });
    } catch (err) {
      message("the gallery cannot be reached");
      return;
    }
    const answer = await reply.json();
    if (!reply.ok) {
      // What is on the page answered another question: it goes, so nothing reads as this one's.
      $("heading").textContent = "";
      $("results").replaceChildren();
      const query = $("query");
      if (query) query.remove();
      const stale = $("next-page");
      if (stale) stale.remove();
      message(`${file.name || "the image"} was refused: ${answer.error}`);
      if (answer.down) checkHealth();
      return;
    }
    const shown = $("query");
    if (shown) shown.remove();
    $("heading").textContent = `Most similar to ${file.name || "the " + how + " image"} (not stored)`;
    const results = $("results");
    results.replaceChildren(...answer.matches.map(tile));
    const next = $("next-page");
    if (next) next.remove();
    if (!answer.matches.length) message("No matches (lower the minimum score, or clear the label).");
  }
  $("upload").addEventListener("change", (event) => searchByImage(event.target.files[0], "chosen"));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    searchByImage(event.dataTransfer.files[0], "dropped");
  });
  document.addEventListener("paste", (event) => {
    const item = [...(event.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
    if (item) searchByImage(item.getAsFile(), "pasted");
  });

  // --- the Index button -------------------------------------------------------------
  const button = $("index-button");
  const bar = $("index-progress");
  const text = $("index-text");
  function showStatus(s) {
    if (!s) return;
    bar.hidden = false;
    bar.max = Math.max(s.total, 1);
    bar.value = s.done;
    const eta = s.eta_s === null ? "" : ` · ETA ${Math.ceil(s.eta_s)} s`;
    if (s.running) {
      text.textContent = `${s.done} / ${s.total} · ${s.rate} img/s${eta}`;
    } else {
      text.textContent = `done: stored ${s.stored}, already stored ${s.skipped}, failed ${s.failed} ` +
        `(of ${s.total} images, ${s.elapsed_s} s)` + (s.error ? ` · stopped: ${s.error}` : "");
    }
    $("index-failures").replaceChildren(...s.failures.map((f) => {
      const li = document.createElement("li");
      li.textContent = `${f.name}: ${f.reason}: ${f.message}`;
      return li;
    }));
    button.disabled = s.running;
  }
  async function follow() {
    for (;;) {
      let s;
      try {
        s = await (await fetch("/api/index", { cache: "no-store" })).json();
      } catch (err) {
        await new Promise((r) => setTimeout(r, 1000));
        continue;
      }
      showStatus(s);
      if (!s.running) {
        if (body.dataset.view === "browse" && s.stored) location.reload();
        return;
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  button.addEventListener("click", async () => {
    button.disabled = true;
    const params = new URLSearchParams({ ns: body.dataset.ns });
    showStatus(await (await fetch(`/api/index?${params}`, { method: "POST" })).json());
    follow();
  });
  const initial = JSON.parse($("index-status").textContent);
  showStatus(initial);
  if (initial && initial.running) follow();
});
