// mmray slide viewer: OpenSeadragon (vendored) for Deep Zoom tiles, a canvas for the overlays.
// State for tests and scripts: window.mmray = {tilesLoaded, slide, overlays: {kind: {features, drawn}}}.
(function () {
  "use strict";
  const state = window.mmray = { tilesLoaded: 0, slide: null, overlays: {}, ready: false, errors: [] };
  const COLOURS = { tissue: [60, 160, 60], tumour: [200, 0, 0], nuclei: [0, 90, 200], attention: [240, 200, 0],
                    extremum: [0, 220, 220] };
  const $ = (id) => document.getElementById(id);
  let patients = [], available = {}, labels = {};
  const viewer = OpenSeadragon({ id: "osd", prefixUrl: "/static/openseadragon/images/", showNavigator: true,
                                 animationTime: 0.2, maxZoomPixelRatio: 2, crossOriginPolicy: false });
  window.mmrayViewer = viewer;
  state.fullyLoaded = () => viewer.world.getItemCount() > 0 && viewer.world.getItemAt(0).getFullyLoaded();
  viewer.addHandler("tile-loaded", () => { state.tilesLoaded += 1; });
  viewer.addHandler("tile-load-failed", (e) => { state.errors.push("tile " + (e.message || "failed")); });
  ["animation", "update-viewport", "resize", "open"].forEach((ev) => viewer.addHandler(ev, draw));

  function status(text) { $("status").textContent = text; }

  function ramp(kind, t) {  // value in [0, 1] -> rgba string
    const c = COLOURS[kind] || [255, 0, 255];
    const a = parseFloat($("opacity").value);
    if (kind === "tissue" || kind === "extremum") return `rgba(${c[0]},${c[1]},${c[2]},${a})`;
    const k = 0.25 + 0.75 * Math.max(0, Math.min(1, t));
    return `rgba(${c[0]},${c[1]},${c[2]},${(a * k).toFixed(3)})`;
  }

  function draw() {
    const canvas = $("layer"), main = $("main");
    canvas.width = main.clientWidth; canvas.height = main.clientHeight;
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!viewer.world.getItemCount()) return;
    const item = viewer.world.getItemAt(0);
    for (const [kind, ov] of Object.entries(state.overlays)) {
      if (!ov.on || !ov.data) continue;
      const lo = ov.data.mmray.min, hi = ov.data.mmray.max;
      let n = 0;
      for (const f of ov.data.features) {
        const ring = f.geometry.coordinates[0];
        const v = f.properties.measurements.value;
        const t = (hi > lo) ? (v - lo) / (hi - lo) : 1;
        ctx.beginPath();
        ring.forEach(([x, y], i) => {
          const p = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
          if (i === 0) ctx.moveTo(p.x, p.y); else ctx.lineTo(p.x, p.y);
        });
        ctx.closePath();
        if (kind === "extremum") {
          ctx.lineWidth = 2; ctx.strokeStyle = ramp(kind, 1); ctx.stroke();
        } else {
          ctx.fillStyle = ramp(kind, t); ctx.fill();
        }
        n += 1;
      }
      ov.drawn = n;
    }
  }

  async function getJSON(url) {
    const r = await fetch(url);
    if (!r.ok) throw new Error(url + ": " + r.status + " " + (await r.text()));
    return r.json();
  }

  function fillSlides(open = true) {
    const p = patients.find((q) => q.patient_id === $("patient").value);
    $("slide").innerHTML = "";
    (p ? p.slides : []).forEach((s) => {
      const o = document.createElement("option");
      o.value = s.slide_id; o.textContent = s.slide_id + (s.readable ? "" : " (file not found)");
      o.disabled = !s.readable; $("slide").appendChild(o);
    });
    if (open) openSlide();
  }

  async function loadOverlay(kind) {
    const ov = state.overlays[kind];
    if (!ov.on || ov.slide === state.slide) { draw(); return; }
    status("loading " + kind + " ...");
    ov.data = await getJSON(`/api/overlay/${encodeURIComponent(state.slide)}/${kind}`);
    ov.slide = state.slide;
    ov.features = ov.data.features.length;
    const a = document.querySelector(`#export-${kind}`);
    a.href = `/api/overlay/${encodeURIComponent(state.slide)}/${kind}.geojson`;
    showInfo();
    status(`${labels[kind]}: ${ov.features} object(s)`);
    draw();
  }

  function showInfo() {
    const ex = state.overlays.extremum;
    if (!ex || !ex.on || !ex.data) { $("info").textContent = ""; return; }
    const top = ex.data.features.slice().sort((a, b) => b.properties.measurements.value - a.properties.measurements.value)
      .slice(0, 5).map((f, i) => `${i + 1}. ${f.properties.scale} at (${f.geometry.coordinates[0][0].join(", ")}): ` +
        `gain ${f.properties.measurements.value.toFixed(3)}\n   ${f.properties.features.join(", ")}`);
    $("info").textContent = top.length ? "Extremum locations\n" + top.join("\n") : "No extremum location on this slide";
  }

  function openSlide() {
    const sid = $("slide").value;
    if (!sid) return;
    state.slide = sid; state.tilesLoaded = 0;
    for (const ov of Object.values(state.overlays)) { ov.data = null; ov.slide = null; ov.drawn = 0; }
    viewer.open(`/dzi/${encodeURIComponent(sid)}.dzi`);
    viewer.addOnceHandler("open", () => {
      Object.keys(state.overlays).forEach((k) => loadOverlay(k).catch((e) => state.errors.push(String(e))));
    });
  }

  // /#slide=..&x=..&y=..&size=..&overlay=..: open that slide, switch the overlay on, zoom to the box
  function applyLink() {
    const link = new URLSearchParams(location.hash.slice(1));
    const target = link.get("slide") && patients.find((p) => p.slides.some((s) => s.slide_id === link.get("slide")));
    if (!target) return null;
    $("patient").value = target.patient_id;
    fillSlides(false);
    $("slide").value = link.get("slide");
    state.focus = null;
    if (link.get("x") !== null) {
      viewer.addOnceHandler("open", () => {
        const x = +link.get("x"), y = +link.get("y"), s = +(link.get("size") || 256);
        const r = viewer.world.getItemAt(0).imageToViewportRectangle(x - s, y - s, 3 * s, 3 * s);
        viewer.viewport.fitBounds(r, true);
        state.focus = { x, y, size: s };
      });
    }
    openSlide();
    const kind = link.get("overlay"), cb = kind && $("ov-" + kind);
    if (cb && !cb.disabled && !cb.checked) cb.click();
    return target;
  }

  async function init() {
    const info = await getJSON("/api/patients");
    patients = info.patients; available = info.overlays; labels = info.labels;
    patients.forEach((p) => {
      const o = document.createElement("option");
      o.value = p.patient_id; o.textContent = `${p.patient_id} (${p.slides.length} slide${p.slides.length === 1 ? "" : "s"})`;
      $("patient").appendChild(o);
    });
    for (const kind of Object.keys(labels)) {
      const lab = document.createElement("label");
      const cb = document.createElement("input");
      cb.type = "checkbox"; cb.id = "ov-" + kind; cb.disabled = !available[kind];
      lab.className = available[kind] ? "" : "off";
      lab.appendChild(cb); lab.appendChild(document.createTextNode(" " + labels[kind]));
      const a = document.createElement("a");
      a.id = "export-" + kind; a.className = "export"; a.textContent = "GeoJSON"; a.href = "#";
      a.title = "QuPath: File > Import objects"; if (available[kind]) lab.appendChild(a);
      $("overlays").appendChild(lab);
      state.overlays[kind] = { on: false, data: null, slide: null, drawn: 0, features: 0 };
      cb.addEventListener("change", () => {
        state.overlays[kind].on = cb.checked;
        if (!cb.checked) state.overlays[kind].drawn = 0;
        loadOverlay(kind).catch((e) => state.errors.push(String(e)));
        draw();
      });
    }
    $("patient").addEventListener("change", () => fillSlides());
    $("slide").addEventListener("change", openSlide);
    $("opacity").addEventListener("input", draw);
    const target = applyLink();
    if (!target) fillSlides(true);
    // a location link opened while the viewer is already showing (what `mmray explain` links to)
    window.addEventListener("hashchange", applyLink);
    state.ready = true;
    status(patients.length ? `${patients.length} patient(s)` : "no slides in this store");
  }
  init().catch((e) => { state.errors.push(String(e)); status(String(e)); });
})();
