// Draws one plotly figure (pcam_app.components.chart.chart) with the plotly.js bundle the app serves from static/
// (built by scripts/plotly-bundle), loaded once per browser tab and shared by every chart of that tab.
// data: {figure: the figure's JSON text, config, src: the bundle's path under the app's address}.
// The chart's element says how it ended: data-state="drawn", or "error" with the reason shown in its place.

// The app's address is wherever Streamlit's own code came from (a base URL path, a proxy's prefix).
function appAddress() {
  const main = document.querySelector('script[type="module"][src*="/static/js/index."]');
  return main ? main.src.slice(0, main.src.indexOf("static/js/")) : new URL(".", document.baseURI).href;
}

function plotlyFrom(src) {
  src = new URL(src, appAddress()).href;
  const loads = (window.__pcamPlotly = window.__pcamPlotly || {});
  if (!loads[src]) {
    loads[src] = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = src;
      script.onload = () => (window.Plotly ? resolve(window.Plotly) : reject(new Error(`${src} did not define Plotly`)));
      script.onerror = () => {
        delete loads[src]; // the next chart tries again
        reject(new Error(`could not load the chart library from ${src}`));
      };
      document.head.appendChild(script);
    });
  }
  return loads[src];
}

function showError(div, message) {
  div.dataset.state = "error";
  div.replaceChildren();
  const note = document.createElement("p");
  note.setAttribute("role", "alert");
  note.style.cssText = "color:#b71c1c;padding:1em;margin:0;border:1px solid #ef9a9a;border-radius:0.5rem";
  note.textContent = `This chart could not be drawn: ${message}`;
  div.appendChild(note);
}

export default function (component) {
  const { parentElement, data } = component;
  let div = parentElement.querySelector("div.pcam-chart");
  if (!div) {
    div = document.createElement("div");
    div.className = "pcam-chart";
    div.style.width = "100%";
    parentElement.appendChild(div);
    // follow the column's width (a window resized, the sidebar opened or closed), once drawn
    let width = 0;
    div.pcamResize = new ResizeObserver(([entry]) => {
      const now = Math.round(entry.contentRect.width);
      // plotly refuses (a rejected promise) a div that is not displayed: a hidden tab, a page being left
      if (now !== width && now > 0 && div.dataset.state === "drawn") window.Plotly.Plots.resize(div).catch(() => {});
      width = now;
    });
    div.pcamResize.observe(div);
  }
  const { config, src } = data;
  const figure = JSON.parse(data.figure);
  const layout = { ...figure.layout };
  layout.font = { family: getComputedStyle(div).fontFamily, ...(layout.font || {}) };
  div.style.minHeight = `${layout.height || 450}px`; // the page keeps its shape while plotly loads
  div.dataset.state = "loading";
  const drawing = (div.pcamDrawing = (div.pcamDrawing || 0) + 1); // a newer figure for this chart wins
  const traces = figure.data || [];
  plotlyFrom(src)
    .then((Plotly) => {
      if (drawing !== div.pcamDrawing) return false;
      div.querySelector(":scope > p[role=alert]")?.remove(); // an earlier failure's note
      return Plotly.react(div, traces, layout, config);
    })
    .then((drawn) => {
      if (!drawn || drawing !== div.pcamDrawing) return;
      // plotly.js draws a trace type its bundle lacks as an empty, hidden scatter: say so instead
      const missing = traces.map((t) => t.type || "scatter").filter((type, i) => div._fullData[i]?.type !== type);
      if (missing.length) showError(div, `the chart library has no ${[...new Set(missing)].join(", ")} traces`);
      else div.dataset.state = "drawn";
    })
    .catch((error) => drawing === div.pcamDrawing && showError(div, error.message));
  // Streamlit calls this when the element goes (or is drawn anew): free plotly's handlers once it has left the page
  return () =>
    setTimeout(() => {
      if (div.isConnected) return;
      div.pcamResize.disconnect();
      if (window.Plotly) window.Plotly.purge(div);
    });
}
