// A table whose columns sort with a click on their header (pcam_app.components.table.sortable_table): plain HTML, one
// element, instead of Streamlit's data grid, whose code and canvas cost a new tab 0.2 s on the Runs page.
// data: {columns: [names], numeric: [whether each column holds numbers], rows: [[cell text]],
//        keys: [[sort key per cell: a number, a string, or null for an empty cell]], caption, height}.
// The sort a user chose is kept while the element stays on the page (new data is sorted the same way).

function compare(a, b) {
  if (a === b) return 0;
  if (a === null) return 1; // empty cells last, either way
  if (b === null) return -1;
  return a < b ? -1 : 1;
}

function draw(table, data) {
  const { column, descending } = table.pcamSort;
  const order = data.rows.map((_, i) => i);
  if (column !== null) {
    order.sort((i, j) => {
      const a = data.keys[i][column];
      const b = data.keys[j][column];
      if (a === null || b === null) return compare(a, b);
      return descending ? compare(b, a) : compare(a, b);
    });
  }
  const head = document.createElement("tr");
  data.columns.forEach((name, c) => {
    const th = document.createElement("th");
    th.scope = "col";
    if (data.numeric[c]) th.className = "pcam-num";
    th.setAttribute("aria-sort", column === c ? (descending ? "descending" : "ascending") : "none");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = name + (column === c ? (descending ? " ↓" : " ↑") : "");
    button.title = `Sort by ${name}`;
    button.setAttribute("aria-label", `Sort by ${name}`);
    button.addEventListener("click", () => {
      // numbers start with the largest (the best AUC first), text in alphabetical order
      table.pcamSort = column === c ? { column: c, descending: !descending } : { column: c, descending: data.numeric[c] };
      draw(table, data);
      table.querySelector(`thead th:nth-child(${c + 1}) button`).focus();
    });
    th.appendChild(button);
    head.appendChild(th);
  });
  const body = document.createElement("tbody");
  for (const i of order) {
    const tr = document.createElement("tr");
    data.rows[i].forEach((text, c) => {
      const td = document.createElement("td");
      if (data.numeric[c]) {
        td.className = "pcam-num";
        td.textContent = text;
      } else {
        breakable(td, text);
      }
      tr.appendChild(td);
    });
    body.appendChild(tr);
  }
  const thead = document.createElement("thead");
  thead.appendChild(head);
  table.replaceChildren(thead, body);
}

export default function (component) {
  const { parentElement, data } = component;
  let frame = parentElement.querySelector(":scope > div.pcam-table");
  if (!frame) {
    frame = document.createElement("div");
    frame.className = "pcam-table";
    frame.appendChild(document.createElement("table"));
    parentElement.appendChild(frame);
  }
  frame.style.maxHeight = data.height ? `${data.height}px` : "";
  const table = frame.querySelector("table");
  table.pcamSort = table.pcamSort || { column: null, descending: false };
  if (data.caption) table.setAttribute("aria-label", data.caption);
  draw(table, data);
}

// A text cell may wrap at spaces and hyphens, and after the "/" and "_" of paths and names (a <wbr> there),
// never inside a word: "20261129-101530-resnet18" wraps whole parts, not "resn|et18".
function breakable(td, text) {
  String(text).split(/(?<=[\/_])/).forEach((part, k) => {
    if (k) td.appendChild(document.createElement("wbr"));
    td.appendChild(document.createTextNode(part));
  });
}
