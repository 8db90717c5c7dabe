"""Web pages for the catalog, server-rendered (Jinja2 templates, one CSS file, no JavaScript).

- `view`: what the pages show, read from the catalog (synchronous; run in worker threads).
- `pages`: the handlers, as rows for hub serve's route table (`CatalogPages(view).routes()`), every URL
  under `/_/`, which no repo id can start with.
- `app`: `hub ui`, the pages alone on 127.0.0.1.

Starlette and Jinja2 (the `server` extra) are imported only by `pages` and `app`; docs/ui.md lists the pages.
"""
