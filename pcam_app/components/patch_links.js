// A row of patches, each with its caption and a link to another page of the app (pcam_app.components.patch_links.patch_cards):
// one element for the whole row instead of a Streamlit image, caption and page link per patch.
// data: {cards: [{src: a PNG data URL of the patch, caption, href: the page's address with its query}],
//        label: the links' text, width: the patches' width on screen in CSS pixels}.
// A plain click opens the page in this session (the "open" trigger: Python switches page, as st.page_link
// does); a click with a modifier key, a middle click or "open in new tab" follows the address itself.

export default function (component) {
  const { parentElement, data, setTriggerValue } = component;
  let row = parentElement.querySelector(":scope > div.pcam-patch-links");
  if (!row) {
    row = document.createElement("div");
    row.className = "pcam-patch-links";
    parentElement.appendChild(row);
  }
  row.replaceChildren(
    ...data.cards.map((card, i) => {
      const figure = document.createElement("figure");
      figure.style.width = `${data.width}px`;
      const image = document.createElement("img");
      image.src = card.src;
      image.alt = card.caption;
      image.width = data.width;
      image.height = data.width;
      if (data.width % 96 === 0) image.style.imageRendering = "pixelated"; // whole multiples: crisp pixels
      const caption = document.createElement("figcaption");
      caption.textContent = card.caption;
      const link = document.createElement("a");
      link.href = card.href;
      link.textContent = data.label;
      link.addEventListener("click", (event) => {
        if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) return;
        event.preventDefault();
        setTriggerValue("open", i);
      });
      figure.append(image, caption, link);
      return figure;
    }),
  );
}
