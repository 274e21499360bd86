"""Two small fixes that keep the browser console of every page clean (``browser_tests/`` fails on errors).

* Jupyter Book 1.x registers sphinx-thebe's configuration script twice, so each page declared
  ``const THEBE_JS_URL`` twice (a SyntaxError on every page): keep the first copy of each identical script.
* On a first visit (empty localStorage) the theme logged "Got invalid theme mode" because no default mode
  was set: the page context gets ``default_mode = "auto"`` (follow the reader's system setting), which the
  theme's ``layout.html`` reads.
"""


def _fix_page(app, pagename, templatename, context, doctree):
    context.setdefault("default_mode", "auto")  # read by the theme's layout.html
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        attrs = getattr(script, "attributes", {})
        key = (str(getattr(script, "filename", script) or ""), tuple(sorted((k, str(v)) for k, v in attrs.items())))
        if key in seen:
            continue
        seen.add(key)
        unique.append(script)
    scripts[:] = unique




def setup(app):
    app.connect("html-page-context", _fix_page, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
