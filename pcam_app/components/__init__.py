"""The dashboard's own Streamlit components, each a module and its JavaScript: a plotly chart (chart), a
sortable table (table) and a row of patches with links to another page (patch_links)."""
