// A whole slide in OpenSeadragon (pcam_app.components.slide_viewer.slide_viewer), loaded once per tab from the app's
// static/ folder, with the slide's Deep Zoom tiles from the dashboard's own server (pcam_app/slide_routes.py).
// data: {src, prefix: OpenSeadragon and its button images; dzi: the descriptor's path with the slide's version (?v=, which
//        OpenSeadragon repeats on every tile's address); width, height (level-0 px), mpp;
//        heatmap: {url (with the analysis's ?v=), width, height} | null (an image spanning width x height level-0 px
//        from (0, 0), cells at or above &threshold= opaque); tissue: the same for the tissue mask | null; threshold; stops: the colour scale;
//        regions: [{id, rings (level-0 px), bbox [x, y, w, h], longest_diameter_mm, reported}]; goto: {bbox, nonce} | null;
//        marker: [x, y, size] | null (the window last clicked); view_height: in CSS px;
//        truth: {features (GeoJSON, level-0 px: lesions' outlines and regions, each with properties kind and match),
//        colours {match: colour}, words {match: legend words}} | null (pcam_core.evaluation.overlay)}.
// The map's opacity and threshold and the tissue toggle are controls of this element: they change the view without a
// round trip to Python. A click (not a drag) on the slide sends its level-0 point as the "click" trigger.
// The viewer's element says how it is: data-state="open" or "error", data-tiles (slide tiles loaded),
// data-max-level (the finest Deep Zoom level loaded), data-loaded="true" when the view is fully drawn, data-labels (region
// labels drawn) and data-labels-hidden (labels left out because they would overlap others, even shortened to "#n"),
// data-truth (truth outlines drawn). With truth, lesions are drawn dashed and regions solid, each in its match's colour.

function appAddress() {
  const main = document.querySelector('script[type="module"][src*="/static/js/index."]');
  return main ? main.src.slice(0, main.src.indexOf("static/js/")) : new URL(".", document.baseURI).href;
}

function openSeadragonFrom(src) {
  src = new URL(src, appAddress()).href;
  if (!window.__pcamOsd) {
    window.__pcamOsd = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = src;
      script.onload = () => (window.OpenSeadragon ? resolve(window.OpenSeadragon) : reject(new Error(`${src} did not define OpenSeadragon`)));
      script.onerror = () => {
        window.__pcamOsd = null;
        reject(new Error(`could not load the viewer from ${src}`));
      };
      document.head.appendChild(script);
    });
  }
  return window.__pcamOsd;
}

const SVG = "http://www.w3.org/2000/svg";
const NICE = [1, 2, 5];

function niceLength(um) {
  const power = 10 ** Math.floor(Math.log10(um));
  let best = power;
  for (const n of NICE) if (n * power <= um) best = n * power;
  return best;
}

function lengthText(um) {
  return um >= 1000 ? `${um / 1000} mm` : `${um} µm`;
}

function el(tag, attrs = {}, parent = null) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

function buildControls(root, state) {
  const bar = el("div", { class: "pcam-slide-controls" }, root);
  const label = (text, input) => {
    const wrap = el("label", {}, bar);
    wrap.append(input, document.createTextNode(text));
    return wrap;
  };
  state.mapToggle = el("input", { type: "checkbox", "data-control": "heatmap" });
  state.mapToggle.checked = true;
  label(" Tumour map", state.mapToggle);
  state.opacity = el("input", { type: "range", min: "0", max: "1", step: "0.05", value: "0.5", "data-control": "opacity",
                                "aria-label": "Map opacity" });
  label(" opacity", state.opacity);
  state.threshold = el("input", { type: "range", min: "0.05", max: "0.95", step: "0.05", "data-control": "threshold",
                                  "aria-label": "Map threshold" });
  state.thresholdText = el("span", { class: "pcam-threshold-text" });
  label(" shown from ", state.threshold).appendChild(state.thresholdText);
  state.legend = el("span", { class: "pcam-slide-legend", title: "tumour probability (colour scale)" }, bar);
  state.tissueToggle = el("input", { type: "checkbox", "data-control": "tissue" });
  label(" Tissue mask", state.tissueToggle);
  state.regionsToggle = el("input", { type: "checkbox", "data-control": "regions" });
  state.regionsToggle.checked = true;
  label(" Regions", state.regionsToggle);
  state.truthToggle = el("input", { type: "checkbox", "data-control": "truth" });
  state.truthToggle.checked = true;
  state.truthLabel = label(" Truth", state.truthToggle);
  state.truthLegend = el("span", { class: "pcam-truth-legend" }, bar);
}

// The legend of the truth overlay: a dashed swatch per lesion match, a solid one per region match.
function truthLegend(state, truth) {
  state.truthLegend.replaceChildren();
  state.truthLabel.style.display = state.truthLegend.style.display = truth ? "" : "none";
  if (!truth) return;
  for (const [match, words] of Object.entries(truth.words)) {
    const item = el("span", { "data-legend": match }, state.truthLegend);
    const dashed = match === "found" || match === "miss";
    el("i", { style: `border-top: 3px ${dashed ? "dashed" : "solid"} ${truth.colours[match]}` }, item);
    item.append(document.createTextNode(words));
  }
}

function overlayOptions(OSD, data, overlay, query) {
  const url = query ? overlay.url + (overlay.url.includes("?") ? "&" : "?") + query : overlay.url;
  return {
    tileSource: { type: "image", url: new URL(url, appAddress()).href, buildPyramid: false },
    x: 0, y: 0, width: overlay.width / data.width,
  };
}

export default function (component) {
  const { parentElement, data, setTriggerValue } = component;
  let root = parentElement.querySelector(":scope > div.pcam-slide");
  if (root && root.pcam.dzi !== data.dzi) {
    root.pcam.viewer?.destroy();
    root.remove();
    root = null;
  }
  if (!root) {
    root = el("div", { class: "pcam-slide" }, parentElement);
    const state = (root.pcam = { dzi: data.dzi, nonce: null });
    buildControls(root, state);
    state.box = el("div", { class: "pcam-slide-view", "data-state": "loading", "data-tiles": "0", "data-max-level": "-1" }, root);
    state.box.style.height = `${data.view_height}px`;
    openSeadragonFrom(data.src)
      .then((OSD) => open(OSD, root, data, setTriggerValue))
      .catch((error) => fail(state.box, error.message));
  }
  root.pcam.data = data;
  root.pcam.setTriggerValue = setTriggerValue;
  if (root.pcam.viewer) update(root);
  return () => setTimeout(() => {
    if (!root.isConnected) root.pcam.viewer?.destroy();
  });
}

function fail(box, message) {
  box.dataset.state = "error";
  box.replaceChildren();
  const note = el("p", { role: "alert" }, box);
  note.style.cssText = "color:#b71c1c;padding:1em;margin:0";
  note.textContent = `The slide cannot be shown: ${message}`;
}

function open(OSD, root, data, setTriggerValue) {
  const state = root.pcam;
  const base = appAddress();
  const viewer = (state.viewer = OSD({
    element: state.box,
    prefixUrl: new URL(data.prefix, base).href,
    tileSources: new URL(data.dzi, base).href,
    drawer: "canvas",
    showNavigator: true,
    navigatorPosition: "TOP_RIGHT",
    maxZoomPixelRatio: 2,
    visibilityRatio: 0.5,
    immediateRender: false,
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
    crossOriginPolicy: false,
  }));
  state.svg = el("svg:svg", { class: "pcam-slide-svg" });
  state.svg.style.cssText = "position:absolute;inset:0;width:100%;height:100%;pointer-events:none;z-index:2";
  state.shapes = el("svg:g", {}, state.svg);
  state.labels = el("svg:g", {}, state.svg);
  state.scalebar = el("div", { class: "pcam-scalebar" });
  viewer.addHandler("open", () => {
    state.slide = viewer.world.getItemAt(0);
    state.box.dataset.state = "open";
    // whether every tile the view needs is drawn: follows the tiles themselves, not the end of an animation (tiles
    // may still be on their way when the zoom's animation ends, on a busy server)
    state.slide.addHandler("fully-loaded-change", (event) => { state.box.dataset.loaded = String(event.fullyLoaded); });
    viewer.canvas.appendChild(state.svg);
    viewer.canvas.appendChild(state.scalebar);
    update(root);
  });
  viewer.addHandler("open-failed", (event) => fail(state.box, event.message || "the tiles could not be opened"));
  viewer.addHandler("tile-loaded", (event) => {
    if (event.tiledImage !== state.slide) return;
    state.box.dataset.tiles = String(Number(state.box.dataset.tiles) + 1);
    state.box.dataset.maxLevel = String(Math.max(Number(state.box.dataset.maxLevel), event.tile.level));
  });
  viewer.addHandler("update-viewport", () => draw(root));
  viewer.addHandler("animation-finish", () => {
    state.box.dataset.loaded = String(Boolean(state.slide?.getFullyLoaded()));
  });
  viewer.world.addHandler("add-item", () => draw(root));
  viewer.addHandler("canvas-click", (event) => {
    if (!event.quick || !state.slide) return;
    const point = state.slide.viewerElementToImageCoordinates(event.position);
    if (point.x < 0 || point.y < 0 || point.x >= state.data.width || point.y >= state.data.height) return;
    state.setTriggerValue("click", { x: Math.round(point.x), y: Math.round(point.y) });
  });
  state.mapToggle.addEventListener("change", () => applyOverlays(root));
  state.opacity.addEventListener("input", () => applyOverlays(root));
  state.threshold.addEventListener("input", () => {
    state.thresholdText.textContent = Number(state.threshold.value).toFixed(2);
  });
  state.threshold.addEventListener("change", () => loadHeatmap(root));
  state.tissueToggle.addEventListener("change", () => applyOverlays(root));
  state.regionsToggle.addEventListener("change", () => draw(root));
  state.truthToggle.addEventListener("change", () => draw(root));
}

// Items of the world: 0 the slide, then the tissue mask and the map (added once each, in this order).
function loadHeatmap(root) {
  const { viewer, data } = root.pcam;
  const state = root.pcam;
  if (!data.heatmap || !state.slide) return;
  const options = overlayOptions(window.OpenSeadragon, data, data.heatmap, `threshold=${Number(state.threshold.value).toFixed(2)}`);
  const old = state.heatItem;
  state.box.dataset.heatmap = "loading";
  viewer.addTiledImage({
    ...options,
    opacity: 0,
    success: (event) => {
      if (old) viewer.world.removeItem(old);
      state.heatItem = event.item;
      state.box.dataset.heatmap = state.threshold.value;
      applyOverlays(root);
    },
    error: () => (state.box.dataset.heatmap = "error"),
  });
}

function loadTissue(root) {
  const state = root.pcam;
  if (!state.data.tissue || state.tissueItem || state.tissueLoading) return;
  state.tissueLoading = true;
  state.tissueFor = state.data.tissue.url;
  state.viewer.addTiledImage({
    ...overlayOptions(window.OpenSeadragon, state.data, state.data.tissue, ""),
    opacity: 0,
    index: 1,
    success: (event) => {
      state.tissueLoading = false;
      if (state.tissueFor !== state.data.tissue?.url) {  // a newer analysis arrived meanwhile
        state.viewer.world.removeItem(event.item);
        loadTissue(root);
        return;
      }
      state.tissueItem = event.item;
      applyOverlays(root);
    },
    error: () => (state.tissueLoading = false),
  });
}

function applyOverlays(root) {
  const state = root.pcam;
  if (state.heatItem) state.heatItem.setOpacity(state.mapToggle.checked ? Number(state.opacity.value) : 0);
  if (state.tissueToggle.checked) loadTissue(root);
  if (state.tissueItem) state.tissueItem.setOpacity(state.tissueToggle.checked ? 0.35 : 0);
  state.box.dataset.overlay = state.mapToggle.checked ? "on" : "off";
  state.box.dataset.tissue = state.tissueToggle.checked ? "on" : "off";
}

function update(root) {
  const state = root.pcam;
  const { data, viewer } = state;
  if (!state.slide) return;
  if (state.legendFor !== data.stops) {
    state.legendFor = data.stops;
    const stops = data.stops.map(([value, colour]) => `${colour} ${100 * value}%`).join(", ");
    state.legend.innerHTML = `<span>0</span><i style="background:linear-gradient(to right, ${stops})"></i><span>1</span>`;
  }
  if (state.thresholdFor !== data.threshold) {  // a new analysis threshold from Python resets the control
    state.thresholdFor = data.threshold;
    state.threshold.value = String(data.threshold);
    state.thresholdText.textContent = Number(data.threshold).toFixed(2);
    state.heatFor = null;
  }
  if (state.heatFor !== (data.heatmap?.url ?? null)) {  // another analysis, or the same one written again
    state.heatFor = data.heatmap?.url ?? null;
    if (!data.heatmap && state.heatItem) {
      viewer.world.removeItem(state.heatItem);
      state.heatItem = null;
    }
    loadHeatmap(root);
  }
  if (state.tissueItem && state.tissueFor !== (data.tissue?.url ?? null)) {
    viewer.world.removeItem(state.tissueItem);
    state.tissueItem = null;
  }
  state.mapToggle.disabled = state.opacity.disabled = state.threshold.disabled = !data.heatmap;
  state.tissueToggle.disabled = !data.tissue;
  if (state.truthFor !== data.truth) {
    state.truthFor = data.truth;
    truthLegend(state, data.truth);
  }
  if (data.goto && data.goto.nonce !== state.nonce) {
    state.nonce = data.goto.nonce;
    const [x, y, w, h] = data.goto.bbox;
    const pad = Math.max(w, h) * 0.25 + 64;
    viewer.viewport.fitBounds(state.slide.imageToViewportRectangle(x - pad, y - pad, w + 2 * pad, h + 2 * pad));
  }
  applyOverlays(root);
  draw(root);
}

const overlaps = (a, b) => a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;

// A region's label ("#3 1.20 mm") where it overlaps no label placed before it: above its box, else below, else to
// its right; failing that shortened to "#3" at the same places; failing that left out (the outline stays).
// Returns whether it was drawn.
function placeLabel(group, region, at, placed) {
  const [x0, y0] = at(region.bbox[0], region.bbox[1]);
  const [x1, y1] = at(region.bbox[0] + region.bbox[2], region.bbox[1] + region.bbox[3]);
  const text = el("svg:text", { fill: "#00e5ff", stroke: "#000", "stroke-width": "0.6", "font-size": "13", "font-weight": "600",
                                "paint-order": "stroke", "data-label": region.id }, group);
  for (const words of [`#${region.id} ${region.longest_diameter_mm.toFixed(2)} mm`, `#${region.id}`]) {
    text.textContent = words;
    for (const [x, y] of [[x0, y0 - 4], [x0, y1 + 14], [x1 + 4, (y0 + y1) / 2 + 4]]) {
      text.setAttribute("x", x.toFixed(1));
      text.setAttribute("y", y.toFixed(1));
      const box = text.getBBox();
      if (!placed.some((other) => overlaps(box, other))) {
        placed.push(box);
        return true;
      }
    }
  }
  text.remove();
  return false;
}

// Regions, their diameters, the clicked window and the scale bar, in screen pixels over the slide.
function draw(root) {
  const state = root.pcam;
  const { data, slide } = state;
  if (!slide) return;
  const origin = slide.imageToViewerElementCoordinates(new window.OpenSeadragon.Point(0, 0));
  const across = slide.imageToViewerElementCoordinates(new window.OpenSeadragon.Point(data.width, 0));
  const scale = (across.x - origin.x) / data.width; // screen px per level-0 px
  const at = (x, y) => [origin.x + x * scale, origin.y + y * scale];
  state.shapes.replaceChildren();
  state.labels.replaceChildren();
  const regionsShown = state.regionsToggle.checked;
  const path = (rings) => rings
    .map((ring) => "M" + ring.map(([x, y]) => at(x, y).map((v) => v.toFixed(1)).join(",")).join("L") + "Z")
    .join("");
  const truth = data.truth && state.truthToggle.checked ? data.truth : null;
  const regionMatch = {};
  let truthDrawn = 0;
  for (const feature of truth ? truth.features : []) {
    const { kind, match } = feature.properties;
    if (kind === "region") {
      regionMatch[feature.properties.region] = match;
      continue;
    }
    el("svg:path", { d: path(feature.geometry.coordinates), fill: "none", stroke: truth.colours[match], "stroke-width": "3",
                     "stroke-dasharray": "7 4", "fill-rule": "evenodd", "data-truth": match }, state.shapes);
    truthDrawn += 1;
  }
  state.box.dataset.truth = String(truthDrawn);
  let hidden = 0;
  if (regionsShown) {
    const placed = [];
    for (const region of data.regions) {  // largest first: the larger a region, the surer its label is drawn
      const match = regionMatch[region.id];
      // a region below the reporting threshold (pcam_core.slides.decision) is drawn thin and dashed, grey unless truth colours it
      const below = region.reported === false;
      el("svg:path", { d: path(region.rings), fill: "none", stroke: match ? truth.colours[match] : below ? "#b0b0b0" : "#00e5ff",
                       "stroke-width": below ? "1" : "2", "stroke-dasharray": below ? "3 3" : "none", "fill-rule": "evenodd",
                       "data-region": region.id, "data-reported": below ? "false" : "true", ...(match ? { "data-match": match } : {}) },
         state.shapes);
      hidden += placeLabel(state.labels, region, at, placed) ? 0 : 1;
    }
  }
  state.box.dataset.labels = String(state.labels.childElementCount);
  state.box.dataset.labelsHidden = String(hidden);
  if (data.marker) {
    const [x, y, size] = data.marker;
    const [sx, sy] = at(x, y);
    const side = Math.max(size * scale, 6);
    el("svg:rect", { x: sx.toFixed(1), y: sy.toFixed(1), width: side.toFixed(1), height: side.toFixed(1), fill: "none",
                     stroke: "#39ff14", "stroke-width": "2", "stroke-dasharray": "4 3", "data-marker": "window" }, state.shapes);
  }
  state.box.dataset.regions = regionsShown ? String(data.regions.length) : "0";
  // the scale bar: a round length near 120 screen pixels
  if (scale > 0 && data.mpp > 0) {
    const um = niceLength((120 / scale) * data.mpp);
    state.scalebar.style.width = `${(um / data.mpp) * scale}px`;
    state.scalebar.textContent = lengthText(um);
    state.scalebar.dataset.um = String(um);
  }
}
