// fexsdk's page: photo mode (POST apply.json) and live webcam mode (POST live, one frame in flight).
// Plain script, no build step, nothing loaded from elsewhere. URLs are relative, so the page works under a
// Ray Serve route prefix too. With a token, the service set an HttpOnly cookie when the page was opened as
// ?token=...; the page's own requests carry it, and the token is taken out of the address bar here.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const state = {
    emotions: [], models: [], liveFps: 30,
    file: null, beforeUrl: null, faces: null, included: [], faceEmotion: [],
    busy: false, again: false, timer: null,
    live: null,
  };

  // -- the token: kept in the service's cookie, not in the address bar or the history ------------------------
  (function dropTokenFromAddress() {
    const url = new URL(window.location.href);
    if (url.searchParams.has("token")) {
      url.searchParams.delete("token");
      const query = url.searchParams.toString();
      window.history.replaceState(null, "", url.pathname + (query ? "?" + query : "") + url.hash);
    }
  })();

  // -- messages -------------------------------------------------------------------------------------------------
  let messageSource = null;
  function showError(text, source) {
    const m = $("message");
    m.textContent = text;
    m.className = "error";
    m.hidden = false;
    messageSource = source || null;
  }
  function showInfo(text, source) {
    showError(text, source);
    $("message").className = "info";
  }
  function clearMessage(source) {
    if (source === undefined || messageSource === source) {
      $("message").hidden = true;
      $("message").textContent = "";
      messageSource = null;
    }
  }
  const HINTS = {
    401: " Open the page as /?token=YOUR_TOKEN, with the token the service was started with (--token or FEX_TOKEN).",
    413: " Use a smaller image (fewer pixels or bytes).",
    415: " Only JPEG and PNG images are taken.",
    429: " The live channel is over its frame-rate limit; frames are slowed down.",
  };
  async function errorText(resp, what) {
    let detail = "";
    try {
      const type = resp.headers.get("content-type") || "";
      if (type.includes("json")) {
        const obj = await resp.json();
        detail = obj.error || JSON.stringify(obj);
      } else {
        detail = (await resp.text()).replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim().slice(0, 400);
      }
    } catch (e) { /* no body */ }
    return `${what}: the service answered ${resp.status}${detail ? ": " + detail : ""}.${HINTS[resp.status] || ""}`;
  }
  function networkText(err, what) {
    return `${what}: the service cannot be reached (${err.message}). Is fex serve still running?`;
  }

  // -- controls -------------------------------------------------------------------------------------------------
  function mode() { return $("mode-mix").checked ? "mix" : "one"; }

  function mixTarget() {
    const parts = [];
    for (const input of $("mix").querySelectorAll("input[type=range]")) {
      const v = parseFloat(input.value);
      if (v > 0) parts.push(`${input.dataset.emotion}=${v.toFixed(2)}`);
    }
    return parts.join(",");
  }

  function globalTarget() { return mode() === "mix" ? mixTarget() : $("emotion").value; }

  function targetLabel() { return mode() === "mix" ? "mix" : $("emotion").value; }

  // The request's fields: the emotion (per face where the photo's faces have their own), strength, seed, model,
  // and which faces (their indices, left to right, as the service numbers them).
  function fields(forPhoto) {
    const f = {emotion: globalTarget(), seed: $("seed").value || "0", model: $("model").value};
    if (!$("strength-default").checked) f.strength = $("strength").value;
    if (forPhoto && state.faces) {
      const chosen = state.included.map((on, i) => (on ? i : -1)).filter((i) => i >= 0);
      const perFace = mode() === "one" && chosen.some((i) => state.faceEmotion[i]);
      if (chosen.length && perFace) {
        f.emotion = chosen.map((i) => `${i}:${state.faceEmotion[i] || $("emotion").value}`).join(",");
      } else if (chosen.length < state.faces.length) {
        f.faces = JSON.stringify(chosen);
      }
    }
    return f;
  }

  function buildControls(emotions) {
    state.emotions = emotions;
    const select = $("emotion");
    select.replaceChildren(...emotions.map((e) => new Option(e, e)));
    select.value = emotions.includes("happy") ? "happy" : emotions[0];
    const mix = $("mix");
    mix.replaceChildren();
    for (const e of emotions) {
      const label = document.createElement("label");
      label.textContent = e;
      label.htmlFor = `mix-${e}`;
      const input = document.createElement("input");
      Object.assign(input, {type: "range", min: "0", max: "1", step: "0.05", value: "0", id: `mix-${e}`});
      input.dataset.emotion = e;
      const out = document.createElement("output");
      out.textContent = "0";
      input.addEventListener("input", () => { out.textContent = input.value; showMixSum(); changed(true); });
      mix.append(label, input, out);
    }
  }

  function showMixSum() {
    let sum = 0;
    for (const input of $("mix").querySelectorAll("input[type=range]")) sum += parseFloat(input.value);
    const hint = $("mix-sum");
    hint.textContent = `sum ${sum.toFixed(2)}` + (sum > 1.0001 ? " (over 1: the service refuses it)" : "") +
      (sum === 0 ? " (move a slider)" : "");
  }

  function wireControls() {
    for (const radio of document.querySelectorAll("input[name=mode]")) {
      radio.addEventListener("change", () => {
        const mix = mode() === "mix";
        $("mix").hidden = !mix;
        $("mix-sum").hidden = !mix;
        $("emotion").hidden = mix;
        showMixSum();
        renderFaces();
        changed(false);
      });
    }
    $("emotion").addEventListener("change", () => changed(false));
    $("strength-default").addEventListener("change", () => {
      $("strength").disabled = $("strength-default").checked;
      showStrength();
      changed(false);
    });
    $("strength").addEventListener("input", () => { showStrength(); changed(true); });
    $("seed").addEventListener("change", () => changed(false));
    $("model").addEventListener("change", () => changed(false));
  }

  function showStrength() {
    $("strength-value").textContent = $("strength-default").checked ? "default" : parseFloat($("strength").value).toFixed(2);
  }

  // A control moved: the photo is done again (sliders wait until they rest); live mode reads them per frame.
  function changed(slider) {
    if (!state.file || !$("live-mode").hidden) return;
    clearTimeout(state.timer);
    state.timer = setTimeout(runPhoto, slider ? 250 : 0);
  }

  // -- photo mode -----------------------------------------------------------------------------------------------
  function setPhoto(file) {
    if (!file) return;
    state.file = file;
    state.faces = null;
    state.included = [];
    state.faceEmotion = [];
    if (state.beforeUrl) URL.revokeObjectURL(state.beforeUrl);
    state.beforeUrl = URL.createObjectURL(file);
    const before = $("before");
    before.hidden = false;
    before.src = state.beforeUrl;
    $("after").hidden = true;
    $("after").removeAttribute("src");
    $("download").hidden = true;
    $("boxes").replaceChildren();
    $("faces").replaceChildren();
    runPhoto();
  }

  async function runPhoto() {
    if (!state.file) return;
    if (state.busy) { state.again = true; return; }
    state.busy = true;
    state.again = false;
    $("busy").hidden = false;
    const file = state.file;
    const form = new FormData();
    form.append("image", state.file, state.file.name || "photo");
    for (const [k, v] of Object.entries(fields(true))) form.append(k, v);
    try {
      const resp = await fetch("apply.json", {method: "POST", body: form, credentials: "same-origin", cache: "no-store"});
      if (state.file !== file) {  // another photo was picked meanwhile: this answer is not for it
        state.again = true;
      } else if (!resp.ok) {
        showError(await errorText(resp, `The photo was not changed`), "photo");
        $("after").hidden = true;
        $("download").hidden = true;
      } else {
        const obj = await resp.json();
        showResult(obj);
        clearMessage("photo");
      }
    } catch (err) {
      showError(networkText(err, "The photo was not changed"), "photo");
    } finally {
      state.busy = false;
      $("busy").hidden = true;
      if (state.again) runPhoto();
    }
  }

  function showResult(obj) {
    const url = `data:image/${obj.format};base64,${obj.image}`;
    const after = $("after");
    after.src = url;
    after.hidden = false;
    after.dataset.faces = String(obj.faces.length);
    const link = $("download");
    link.href = url;
    link.download = `fexsdk-${targetLabel()}.${obj.format === "png" ? "png" : "jpg"}`;
    link.hidden = false;
    if (state.faces === null) {  // every face found: they can be excluded from here on
      state.faces = obj.faces.map((f) => f.box);
      state.included = state.faces.map(() => true);
      state.faceEmotion = state.faces.map(() => "");
      renderFaces();
      if (!state.faces.length) showInfo("No face was found in this photo: it comes back unchanged.", "photo-info");
      else clearMessage("photo-info");
    }
  }

  function toggleFace(i) {
    state.included[i] = !state.included[i];
    renderFaces();
    changed(false);
  }

  function renderFaces() {
    const svg = $("boxes");
    const before = $("before");
    const ns = "http://www.w3.org/2000/svg";
    svg.replaceChildren();
    $("faces").replaceChildren();
    if (!state.faces || !before.naturalWidth) return;
    svg.setAttribute("viewBox", `0 0 ${before.naturalWidth} ${before.naturalHeight}`);
    svg.setAttribute("preserveAspectRatio", "none");
    state.faces.forEach((box, i) => {
      const [x, y, w, h] = box;
      const rect = document.createElementNS(ns, "rect");
      for (const [k, v] of Object.entries({x, y, width: w, height: h})) rect.setAttribute(k, v);
      rect.setAttribute("class", state.included[i] ? "face included" : "face excluded");
      rect.dataset.index = String(i);
      const title = document.createElementNS(ns, "title");
      title.textContent = `face ${i}: ${state.included[i] ? "changed (click to leave it as it is)" : "left as it is (click to change it)"}`;
      rect.append(title);
      rect.addEventListener("click", () => toggleFace(i));
      const text = document.createElementNS(ns, "text");
      text.setAttribute("x", x + 4);
      text.setAttribute("y", y + 16);
      text.textContent = String(i);
      svg.append(rect, text);

      const row = document.createElement("div");
      row.className = "face";
      const check = document.createElement("input");
      Object.assign(check, {type: "checkbox", checked: state.included[i], id: `face-${i}`});
      check.addEventListener("change", () => toggleFace(i));
      const label = document.createElement("label");
      label.htmlFor = check.id;
      label.textContent = ` face ${i} `;
      const select = document.createElement("select");
      select.setAttribute("aria-label", `emotion of face ${i}`);
      select.append(new Option("(as chosen above)", ""), ...state.emotions.map((e) => new Option(e, e)));
      select.value = state.faceEmotion[i] || "";
      select.disabled = mode() === "mix" || !state.included[i];
      select.title = mode() === "mix" ? "a mix applies to every face; choose 'one' for an emotion per face" : "";
      select.addEventListener("change", () => { state.faceEmotion[i] = select.value; changed(false); });
      row.append(check, label, select);
      $("faces").append(row);
    });
  }

  function wirePhoto() {
    $("photo-file").addEventListener("change", (e) => setPhoto(e.target.files[0]));
    $("before").addEventListener("load", renderFaces);
    $("before").addEventListener("error", () => { $("before").hidden = true; });
    const drop = $("drop");
    for (const ev of ["dragenter", "dragover"]) {
      drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
    }
    for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      if (e.dataTransfer.files.length) setPhoto(e.dataTransfer.files[0]);
    });
  }

  // -- live mode ------------------------------------------------------------------------------------------------
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const dataUrl = (blob) => new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });

  async function liveStart() {
    if (state.live) return;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError("This browser offers no webcam to this page: live mode needs a secure context " +
                "(http://127.0.0.1 or localhost, or https in front of the service).", "live");
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({video: {width: {ideal: 640}, height: {ideal: 480}}, audio: false});
    } catch (err) {
      showError(`No webcam: ${err.name}: ${err.message}`, "live");
      return;
    }
    const video = $("live-video");
    video.srcObject = stream;
    try { await video.play(); } catch (e) { /* autoplay starts it */ }
    const live = {stream, running: true, done: [], rtts: []};
    state.live = live;
    $("live-start").disabled = true;
    $("live-stop").disabled = false;
    clearMessage("live");
    liveLoop(live);
  }

  function liveStop() {
    const live = state.live;
    if (!live) return;
    live.running = false;
    for (const track of live.stream.getTracks()) track.stop();
    $("live-video").srcObject = null;
    state.live = null;
    $("live-start").disabled = false;
    $("live-stop").disabled = true;
  }

  async function liveLoop(live) {
    const video = $("live-video");
    const canvas = $("live-canvas");
    const ctx = canvas.getContext("2d");
    const out = $("live-out");
    const probe = $("live-probe");
    let last = 0;
    let shownUrl = null;
    while (live.running) {
      if (!video.videoWidth || video.readyState < 2) { await sleep(30); continue; }
      const gap = last + 1000 / state.liveFps - performance.now();  // the service's per-client frame rate
      if (gap > 0) await sleep(gap);
      last = performance.now();
      const w = Math.min(parseInt($("live-size").value, 10), video.videoWidth);
      const h = Math.round((video.videoHeight * w) / video.videoWidth);
      if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
      ctx.drawImage(video, 0, 0, w, h);
      const sent = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
      const f = fields(false);
      const t0 = performance.now();
      let resp;
      try {
        resp = await fetch("live?" + new URLSearchParams(f), {
          method: "POST", body: sent, headers: {"Content-Type": "image/jpeg"}, credentials: "same-origin", cache: "no-store"});
      } catch (err) {
        showError(networkText(err, "Live mode"), "live");
        await sleep(1000);
        continue;
      }
      if (!resp.ok) {
        showError(await errorText(resp, "A live frame was refused"), "live");
        if (resp.status === 401) { liveStop(); break; }
        await sleep(resp.status === 429 ? 250 : 1000);
        continue;
      }
      const received = await resp.blob();
      const now = performance.now();
      if (!live.running) break;
      clearMessage("live");
      const url = URL.createObjectURL(received);
      out.src = url;
      if (shownUrl) URL.revokeObjectURL(shownUrl);
      shownUrl = url;
      live.done.push(now);
      while (live.done.length > 1 && now - live.done[0] > 2000) live.done.shift();
      live.rtts.push(now - t0);
      if (live.rtts.length > 30) live.rtts.shift();
      const fps = live.done.length > 1 ? (1000 * (live.done.length - 1)) / (now - live.done[0]) : 0;
      const rtt = live.rtts.reduce((a, b) => a + b, 0) / live.rtts.length;
      const server = resp.headers.get("X-Server-Ms") || "-";
      const faces = resp.headers.get("X-Face-Count") || "0";
      $("live-stats").textContent =
        `FPS ${fps.toFixed(1)} · round trip ${rtt.toFixed(0)} ms · service ${server} ms · faces ${faces} · ${w}x${h}`;
      // For tests and debugging: the last frame sent and the one shown for it, with the fields it was sent with.
      const [sentUrl, receivedUrl] = await Promise.all([dataUrl(sent), dataUrl(received)]);
      Object.assign(probe.dataset, {
        sent: sentUrl, received: receivedUrl, emotion: f.emotion, seed: f.seed, strength: f.strength || "",
        model: f.model, faces: faces, fps: fps.toFixed(2), rtt: rtt.toFixed(1), server: server,
        frames: String(parseInt(probe.dataset.frames || "0", 10) + 1),
      });
    }
  }

  // -- tabs, models, start -----------------------------------------------------------------------------------------
  function showTab(which) {
    const live = which === "live";
    $("photo-mode").hidden = live;
    $("live-mode").hidden = !live;
    $("tab-photo").classList.toggle("active", !live);
    $("tab-live").classList.toggle("active", live);
    $("tab-photo").setAttribute("aria-pressed", String(!live));
    $("tab-live").setAttribute("aria-pressed", String(live));
    if (!live) liveStop();
    clearMessage();
  }

  async function getJson(path, what) {
    let resp;
    try {
      resp = await fetch(path, {credentials: "same-origin", cache: "no-store"});
    } catch (err) {
      showError(networkText(err, what), "start");
      return null;
    }
    if (!resp.ok) {
      showError(await errorText(resp, what), "start");
      return null;
    }
    return resp.json();
  }

  async function start() {
    wireControls();
    wirePhoto();
    $("tab-photo").addEventListener("click", () => showTab("photo"));
    $("tab-live").addEventListener("click", () => showTab("live"));
    $("live-start").addEventListener("click", liveStart);
    $("live-stop").addEventListener("click", liveStop);
    showStrength();
    const [models, info] = await Promise.all([getJson("models", "The model list"), getJson("model", "The model")]);
    if (models) {
      $("model").replaceChildren(...models.models.map((m) => new Option(m, m)));
      $("model").value = models.default;
    }
    if (info) {
      buildControls(info.metadata.emotions);
      if (info.limits && info.limits.live_max_fps) state.liveFps = info.limits.live_max_fps;
    }
    document.body.dataset.ready = models && info ? "yes" : "error";
  }

  start();
})();
